"""Metrics that judge models: generated cells, gene rankings, text answers and labels.

* :mod:`~c2s_engine.metrics.distribution`: scFID, MMD, Wasserstein in an embedding space, per
  condition and averaged (:func:`compare_distributions`).
* :mod:`~c2s_engine.metrics.embeddings`: the embeddings those are computed in (PCA fitted on the
  real cells by default, or any callable such as the model's own embeddings).
* :mod:`~c2s_engine.metrics.ranking`: Kendall tau over a gene program, Pearson r of the mean
  expression change, gene overlap.
* :mod:`~c2s_engine.metrics.text`: BERTScore-F1 with a local, pluggable encoder.
* Accuracy, macro-F1, the confusion matrix and the paired (McNemar) test of two annotators
  come from
  :mod:`c2s_engine.tasks.label_metrics` and are re-exported here.
"""

from c2s_engine.metrics.distribution import (
    DistributionComparison,
    compare_distributions,
    frechet_distance,
    median_bandwidth,
    mmd_rbf,
    scfid,
    wasserstein,
)
from c2s_engine.metrics.embeddings import (
    CellEmbedding,
    FunctionEmbedding,
    PCAEmbedding,
    align_genes,
    cell_matrix,
)
from c2s_engine.metrics.ranking import (
    gene_overlap,
    gene_ranks,
    kendall_tau,
    mean_expression,
    mean_kendall_tau,
    pearson_delta,
    sentence_genes,
)
from c2s_engine.metrics.text import (
    BERTScore,
    TextEncoder,
    TransformerTextEncoder,
    bertscore,
    bertscore_f1,
    default_encoder_path,
    load_text_encoder,
)
from c2s_engine.tasks.label_metrics import (
    LabelMetrics,
    classification_metrics,
    normalize_label,
    paired_accuracy_test,
)

__all__ = [
    "BERTScore",
    "CellEmbedding",
    "DistributionComparison",
    "FunctionEmbedding",
    "LabelMetrics",
    "PCAEmbedding",
    "TextEncoder",
    "TransformerTextEncoder",
    "align_genes",
    "bertscore",
    "bertscore_f1",
    "cell_matrix",
    "classification_metrics",
    "compare_distributions",
    "default_encoder_path",
    "frechet_distance",
    "gene_overlap",
    "gene_ranks",
    "kendall_tau",
    "load_text_encoder",
    "mean_expression",
    "mean_kendall_tau",
    "median_bandwidth",
    "mmd_rbf",
    "normalize_label",
    "paired_accuracy_test",
    "pearson_delta",
    "scfid",
    "sentence_genes",
    "wasserstein",
]
