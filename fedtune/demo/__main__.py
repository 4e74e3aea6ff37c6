import sys

from fedtune.demo.run import main

sys.exit(main())
