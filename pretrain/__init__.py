"""SparK pre-training job (``spark-pretrain``): config, data, loop, checkpoints and pictures."""
