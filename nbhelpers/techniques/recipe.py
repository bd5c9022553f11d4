"""Where an int8 model's speed comes from, on a model of one's own (notebook 11's recipe: prune,
distill, fold, int8).

The speed-up of an int8 model converted by ``torch.ao`` mixes two steps: the conversion folds every
batch norm into its convolution, then runs the folded model on 8-bit kernels. A folded float32 row
beside the int8 row splits the two (``speed_split``). Notebook 11's facts and the wording of its
loss verdict are in ``nbhelpers.lessons.your_own_model``.
"""

from __future__ import annotations

import pandas as pd


def speed_split(table: pd.DataFrame, base: str, folded: str, int8: str, batch: int) -> dict:
    """How an int8 model's speed-up splits into batch-norm folding's share and int8's.

    Args:
        table: ``measure.compare`` of the models, timed side by side (``speedup_b<batch>``).
        base: the float model before folding.
        folded: the same model with its batch norms folded, still float32.
        int8: the int8 model (folded by its conversion).
        batch: the batch size whose speed-ups are split.

    Returns:
        {"folding", "int8", "both"}: folded over base, int8 over folded and int8 over base, as
        speed ratios (above 1: faster); "both" is the product of the other two.
    """
    col = f"speedup_b{batch}"
    b, f, q = (float(table.loc[n, col]) for n in (base, folded, int8))
    return {"folding": f / b, "int8": q / f, "both": q / b}
