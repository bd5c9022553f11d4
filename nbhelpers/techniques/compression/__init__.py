"""The deployable artifact of a compressed model: sparse int8 weights, optionally entropy-coded, and
the pipeline that makes it.

Deep Compression (Han et al. 2016) stores a pruned, quantized network as its non-zero quantized
weights, their positions and one scale per layer, then entropy-codes the lot. Here the positions
are a bitmap (one bit per weight, cheaper than indices above about 6% density), the values are
the int8 weights of a ``torch.ao`` dynamic-int8 model, and the entropy coder is LZMA.
Convolutions (Caffe's LeNet-5 of Deep Compression) are quantized weight-only: their weights are
rounded to int8 with one scale per layer and stored the same way; they still compute in float.

Eager int8 runs on the CPU only: the arrays are read on the CPU and the unpacked models are CPU
models.

Modules (every public name of the first five is re-exported here, so
``compression.pack_int8_sparse`` works; ``compact`` and ``coder`` are used as
``compression.compact.encode``):
    artifact   int8 models, the sparse int8 artifact: pack, save, load, unpack
    entropy    Huffman bits, Shannon bound, what each way of coding an artifact costs
    pipeline   the pipeline's checks, gradual pruning, Deep Compression's recipe, one search point,
               the stage table's rows
    codebook   trained weight sharing: k-means codebooks per layer, fine-tuned, rounded to float16
    record     the compression record: per-layer gradual pruning, the codebook stage, the bytes
               each component saves
    compact    the compact artifact (codebooks, coded positions, arithmetic-coded stream) and its
               exact decoder
    coder      the adaptive arithmetic coder and the header's integers

Notebook 10's Pareto board, search-against-hand-built tables and facts are in
``nbhelpers.lessons.compression_pipeline``.
"""

from nbhelpers.techniques.compression import coder, compact
from nbhelpers.techniques.compression.artifact import (
    FIELDS,
    int8_conv_weights,
    int8_linears,
    int8_model,
    layer_names,
    load_artifact,
    pack_int8_sparse,
    save_artifact,
    unpack_float_mlp,
    unpack_int8,
    unpack_int8_mlp,
    weights_at_bits,
)
from nbhelpers.techniques.compression.codebook import SharedWeights, bake, share_weights, shared
from nbhelpers.techniques.compression.entropy import (
    coding_table,
    entropy_bits,
    huffman_bits,
    nonzero_values,
)
from nbhelpers.techniques.compression.pipeline import (
    MO_KNOBS,
    PIPELINE_MODELS,
    check_mo_space,
    check_pipeline,
    deep_compression_recipe,
    pipeline_point,
    prune_gradually,
    stage_steps,
    with_entropy_stage,
)
from nbhelpers.techniques.compression.record import (
    RECORD_KEYS,
    LayerPruner,
    artifact_summary,
    check_keep,
    check_record,
    prune_layers_gradually,
    size_stages,
    stage_table,
    tune_codebooks,
)

__all__ = [
    "FIELDS",
    "LayerPruner",
    "MO_KNOBS",
    "PIPELINE_MODELS",
    "RECORD_KEYS",
    "SharedWeights",
    "artifact_summary",
    "bake",
    "check_keep",
    "check_record",
    "check_mo_space",
    "check_pipeline",
    "coder",
    "coding_table",
    "compact",
    "deep_compression_recipe",
    "entropy_bits",
    "huffman_bits",
    "int8_conv_weights",
    "int8_linears",
    "int8_model",
    "layer_names",
    "load_artifact",
    "nonzero_values",
    "pack_int8_sparse",
    "pipeline_point",
    "prune_gradually",
    "prune_layers_gradually",
    "save_artifact",
    "share_weights",
    "shared",
    "size_stages",
    "stage_steps",
    "stage_table",
    "tune_codebooks",
    "unpack_float_mlp",
    "unpack_int8",
    "unpack_int8_mlp",
    "weights_at_bits",
    "with_entropy_stage",
]
