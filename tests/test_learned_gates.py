"""The learned-gates finding (issue 13) on a case small enough for CI: the paper's literal loss collapses
onto the first exit and leaves the final classifier near chance; the default `proposed` (the joint
per-exit CE beside the paper's loss) trains the final exit well above chance.

Real data: Fashion-MNIST from Debian's package (skipped when absent). VGG-13 at 1/8 width with its nine
exits, 1,000 images (800 train, 200 validation), two epochs, fp32: about 20 s per run. Measured over seeds
0-2 (this project's 2-core CPU), validation accuracy of the final exit: literal 10.5-24.5% with every
sample routed to exit 1, default 63.0-68.5%; the bounds below leave about 10 points either side.
"""
from pathlib import Path

import pytest

from repro.config import TrainConfig
from repro.methods import LITERAL_LOSS, is_literal_loss
from repro.trainer import fit

FASHION = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(not (FASHION / "train-images-idx3-ubyte.gz").is_file(),
                                   reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")


def _train(tmp_path, name: str, **method_options) -> dict:
    config = TrainConfig.from_recipe("report", method="proposed", dataset="fashion-mnist", data_dir=str(tmp_path / "data"),
                                     subset=1000, epochs=2, batch_size=50, lr=1e-3, width=0.125, batch_norm=True,
                                     classifier="linear", precision="fp32", **method_options)
    return fit(config, tmp_path / name, device="cpu").rows[-1]


@needs_fashion
def test_literal_loss_collapses_and_the_default_trains_the_final_exit(tmp_path):
    literal = _train(tmp_path, "literal", **LITERAL_LOSS)
    default = _train(tmp_path, "default")
    final = len([k for k in literal if k.startswith("val_acc_exit")]) - 1
    assert final == 9  # VGG-13 with the report's nine early exits
    # The literal loss: the soft output routes (almost) everything to exit 1; the final exit stays near chance.
    assert literal["route_exit0"] > 0.9
    assert literal[f"val_acc_exit{final}"] < 0.35
    # The default: the final classifier learns, far above chance and far above the literal loss's.
    assert default[f"val_acc_exit{final}"] > 0.55
    assert default[f"val_acc_exit{final}"] - literal[f"val_acc_exit{final}"] > 0.25
    assert not is_literal_loss("proposed", {"joint_weight": 1.0}) and is_literal_loss("proposed", LITERAL_LOSS)
