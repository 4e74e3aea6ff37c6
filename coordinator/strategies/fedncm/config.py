from pydantic import BaseModel, ConfigDict, Field


class FedNCMConfig(BaseModel):
    """One round that sets the classifier head to the pooled class means of its input features."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # module path of the classifier's final linear layer in the base model (BERT-like: classifier;
    # RoBERTa-like: classifier.out_proj)
    head: str = Field("classifier", min_length=1)
    # logit gap, at the class means, between a class and its nearest other class: sets the head's
    # scale (a small gap leaves fine-tuning a near-uniform softmax, a large one an overconfident head)
    margin: float = Field(4.0, gt=0, le=100)
