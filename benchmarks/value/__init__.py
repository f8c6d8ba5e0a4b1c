"""Proof of value: SparK pre-training against random initialisation on a real labelled data set.

``spark-bench value`` pre-trains with ``spark-pretrain`` on the training images (labels ignored), then
evaluates the pre-trained encoder and the same architecture from scratch with one recipe and budget:
kNN and linear probe on frozen features, and fine-tuning on class-balanced label subsets over seeds.
"""
