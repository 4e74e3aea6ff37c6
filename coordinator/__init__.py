"""The fedtune coordinator: gRPC servicers (thin), scheduler, aggregation, server main. No torch here."""
