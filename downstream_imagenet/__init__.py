"""ImageNet classification fine-tuning and linear probing of SparK pre-trained timm CNNs (``spark-finetune``)."""
