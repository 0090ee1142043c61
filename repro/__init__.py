"""repro: reproduce and extend "Differentiable branching in deep networks for fast inference"
(Scardapane et al., ICASSP 2020, doi 10.1109/ICASSP40776.2020.9054209) and its reproduction report."""

__version__ = "0.1.0"
