"""Mean, standard deviation and a paired comparison over seeds (Student's t, two-sided)."""
import math
from typing import Dict, Optional, Sequence


def mean_std(values: Sequence[float]) -> Dict[str, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return {"mean": mean, "std": std, "n": n}


def _student_t_cdf(t: float, df: int, steps: int = 20000) -> float:
    """P(T <= t) for Student's t with ``df`` degrees of freedom (Simpson's rule on the density)."""
    coefficient = math.exp(math.lgamma((df + 1) / 2) - math.lgamma(df / 2)) / math.sqrt(df * math.pi)
    density = lambda x: coefficient * (1 + x * x / df) ** (-(df + 1) / 2)  # noqa: E731
    upper = abs(t)
    h = upper / steps
    area = density(0) + density(upper) + sum((4 if i % 2 else 2) * density(i * h) for i in range(1, steps))
    half = area * h / 3
    return 0.5 + half if t >= 0 else 0.5 - half


def paired_comparison(method: Sequence[float], baseline: Sequence[float]) -> Dict[str, Optional[float]]:
    """Per-seed differences (same seed = same label subset): mean ± std, wins, t statistic and p-value."""
    differences = [a - b for a, b in zip(method, baseline)]
    summary = mean_std(differences)
    n = len(differences)
    t_value: Optional[float] = None
    p_value: Optional[float] = None
    if n > 1:
        if summary["std"] > 0:
            t_value = summary["mean"] / (summary["std"] / math.sqrt(n))
            p_value = 2 * (1 - _student_t_cdf(abs(t_value), n - 1))
        else:
            p_value = 0.0 if summary["mean"] != 0 else 1.0
    return {"mean": summary["mean"], "std": summary["std"], "n": n, "wins": sum(d > 0 for d in differences),
            "t": t_value, "p": p_value, "differences": differences}
