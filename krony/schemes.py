"""The compression schemes of the paper's Table 1 and Table 2, by name and by A dims, and the
chooser of Kronecker dims for a parameter budget (any model).

A scheme is the shape of A for the FFN's *expand* matrices (GPT-2's d -> 4d), (m1, n1); the
*contract* matrices (4d -> d) use A = (n1, m1) (roles: `krony.targets`). The table below is
the only place the rows are written; everything else (names by dims, B dims, parameter
counts) is derived from it. Every scheme with its size and the counting conventions:
docs/method.md; the chooser's rules: docs/families.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence



def check_dims(out_features: int, in_features: int, a_dims: tuple[int, int], what: str = "matrix") -> tuple[int, int]:
    """B dims (m2, n2) for A dims (m1, n1) of an (out, in) matrix; ValueError if they do not divide it."""
    m1, n1 = (int(d) for d in a_dims)
    if m1 < 1 or n1 < 1 or out_features % m1 or in_features % n1:
        raise ValueError(
            f"A dims ({m1}, {n1}) do not divide the {what} of shape (out={out_features}, in={in_features}): "
            f"m1 must divide {out_features} and n1 must divide {in_features} "
            f"(for example m1 in {_some_divisors(out_features)}, n1 in {_some_divisors(in_features)})"
        )
    return out_features // m1, in_features // n1


def _some_divisors(n: int, limit: int = 12) -> str:
    divs = [d for d in range(1, n + 1) if n % d == 0]
    shown = divs if len(divs) <= limit else divs[: limit // 2] + ["..."] + divs[-limit // 2 :]
    return "{" + ", ".join(str(d) for d in shown) + "}"


@dataclass(frozen=True)
class Scheme:
    """One row of Table 1: the A dims of the expand matrices, and the name the paper uses for it, if any."""

    a_dims: tuple[int, int]
    """(m1, n1): the shape of each A for an expand matrix (out=4d, in=d); contract matrices use (n1, m1)."""
    name: str = ""
    """The paper's name for the row ("67m", "81m", ...); rows without one go by dims."""

    @property
    def key(self) -> str:
        """The registry key: the name, or "m1x n1" dims such as "64x48"."""
        return self.name or dims_key(self.a_dims)

    def a_dims_for(self, role: str) -> tuple[int, int]:
        """A dims for an "expand" matrix, or the transposed shape for a "contract" one."""
        if role == "expand":
            return self.a_dims
        if role == "contract":
            return (self.a_dims[1], self.a_dims[0])
        raise ValueError(f"a scheme gives A dims of the FFN's expand and contract matrices, not of a {role!r} one; "
                         "size other matrices with ffn_fraction=")

    def b_dims_for(self, role: str, n_embd: int = 768, n_inner: int = 3072) -> tuple[int, int]:
        """B dims (m2, n2) of the `role` matrix in a model of width `n_embd` and FFN width `n_inner`."""
        out, inp = (n_inner, n_embd) if role == "expand" else (n_embd, n_inner)
        return check_dims(out, inp, self.a_dims_for(role), f"{role} weight")

    def params_per_matrix(self, factors: int = 1, n_embd: int = 768, n_inner: int = 3072) -> int:
        """Factor parameters of one FFN matrix (no scalars, no bias): r * (m1*n1 + m2*n2)."""
        m2, n2 = self.b_dims_for("expand", n_embd, n_inner)
        return factors * (self.a_dims[0] * self.a_dims[1] + m2 * n2)

    def params_for(self, role: str, out_features: int, in_features: int, factors: int = 1) -> int:
        """Factor parameters of the `role` matrix of shape (out, in) under this scheme."""
        (m1, n1) = self.a_dims_for(role)
        m2, n2 = check_dims(out_features, in_features, (m1, n1), f"{role} weight")
        return factors * (m1 * n1 + m2 * n2)


def dims_key(a_dims: tuple[int, int]) -> str:
    return f"{a_dims[0]}x{a_dims[1]}"


# Table 1 (A dims of c_fc for GPT-2 small), in the paper's order; rows sharing a line there
# have the same parameter count. Named rows carry the paper's name.
_TABLE: list[tuple[tuple[int, int], str]] = [
    ((64, 32), "67m"),
    ((64, 48), ""), ((96, 32), ""),
    ((64, 64), ""), ((128, 32), ""),
    ((96, 48), ""),
    ((96, 64), ""), ((128, 48), ""),
    ((128, 64), ""),
    ((96, 96), ""), ((192, 48), ""),
    ((128, 96), ""), ((192, 64), ""),
    ((128, 128), ""),
    ((256, 64), "mf1"),
    ((1024, 256), "mf2"),
    ((768, 384), ""),
    ((1024, 384), ""),
    ((768, 768), "81m"),
    ((1536, 384), "81m_alt"),
    ((1024, 768), ""),
    ((1536, 768), "96m"),
    ((3072, 768), "gpt2"),
]

# Not in Table 1: the paper's section 3.2 writes its 95M model as c_fc (3072, 768) =
# A (3072, 384) kron B (1, 2), c_proj = (384, 3072) kron (2, 1); the same parameter count as
# 96m (1536, 768) kron (2, 1), a different model (B splits the input, not the output).
_SECTION_3_2: list[tuple[tuple[int, int], str]] = [((3072, 384), "95m")]

TABLE1: tuple[Scheme, ...] = tuple(Scheme(dims, name) for dims, name in _TABLE)
"""Every row of Table 1, in the paper's order."""

NAMED: tuple[Scheme, ...] = TABLE1 + tuple(Scheme(dims, name) for dims, name in _SECTION_3_2)
"""Table 1 and the schemes the paper's text names outside it (`95m`)."""

SCHEMES: dict[str, Scheme] = {}
"""Every scheme of `NAMED` by name ("81m") and by A dims ("768x768"); named rows appear under both."""
for _s in NAMED:
    if _s.name:
        SCHEMES[_s.name] = _s
    SCHEMES[dims_key(_s.a_dims)] = _s


def get_scheme(scheme: str | Scheme | tuple[int, int] | list[int]) -> Scheme:
    """A scheme by name ("81m"), dims key ("768x768"), (m1, n1) pair, or a `Scheme` itself.

    Dims outside Table 1 are accepted as a custom scheme; whether they divide a given
    matrix is checked when a layer is built.
    """
    if isinstance(scheme, Scheme):
        return scheme
    if isinstance(scheme, (tuple, list)):
        if len(scheme) != 2 or not all(isinstance(d, int) and d > 0 for d in scheme):
            raise ValueError(f"scheme dims must be two positive integers (m1, n1), got {scheme!r}")
        dims = (int(scheme[0]), int(scheme[1]))
        return SCHEMES.get(dims_key(dims), Scheme(dims))
    key = str(scheme).strip().lower().replace("(alt)", "_alt").replace(" ", "")
    if key in SCHEMES:
        return SCHEMES[key]
    parts = key.split("x")
    if len(parts) == 2 and all(p.isdigit() and int(p) > 0 for p in parts):
        return Scheme((int(parts[0]), int(parts[1])))
    from krony.suggest import suggest

    names = [s.name for s in NAMED if s.name]
    raise ValueError(
        f"unknown scheme {scheme!r}{suggest(key, names)}: valid names: {', '.join(names)}; "
        f"or A dims of the FFN's expand matrix as 'm1xn1' (Table 1 rows: {', '.join(dims_key(s.a_dims) for s in TABLE1)})"
    )


FFN_PREFIX = "ffn"
"""`decomp=ffn50`: keep 50% of the FFN parameters (any model; Kronecker dims from `choose_dims`)."""


def parse_fraction(decomp: object) -> float | None:
    """The fraction of `decomp` written "ffnNN" (NN percent, e.g. ffn50, ffn12.5), else None;
    ValueError when it starts with "ffn" but is not a percentage in (0, 100]."""
    key = str(decomp).strip().lower()
    if not key.startswith(FFN_PREFIX):
        return None
    try:
        pct = float(key[len(FFN_PREFIX):])
    except ValueError:
        pct = -1.0
    if not 0 < pct <= 100:
        raise ValueError(f"{decomp!r}: write the FFN fraction to keep as a percentage, e.g. ffn50 or ffn12.5")
    return pct / 100


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def path_costs(m1: int, n1: int, m2: int, n2: int, factors: int = 1) -> dict[str, int]:
    """Multiply-adds per token of each forward path of a Kronecker layer for A (m1, n1), B (m2, n2)
    and r factors (docs/performance.md; `krony.layers.kronecker.choose_path` picks from them)."""
    return {
        "b_first": factors * (n1 * n2 * m2 + m1 * n1 * m2),
        "a_first": factors * (m1 * n1 * n2 + m1 * n2 * m2),
        "dense": m1 * m2 * n1 * n2,
    }


def max_rank(out_features: int, in_features: int, a_dims: tuple[int, int], factors: int = 1) -> int:
    """The largest rank a sum of `factors` Kronecker products A (m1, n1) x B (m2, n2) can reach:
    rank(A kron B) = rank(A) rank(B), so r * min(m1, n1) * min(m2, n2), capped by the matrix's."""
    (m1, n1) = a_dims
    m2, n2 = out_features // m1, in_features // n1
    return min(out_features, in_features, factors * min(m1, n1) * min(m2, n2))


def choose_dims(out_features: int, in_features: int, params: float, factors: int = 1,
                tolerance: float = 0.02) -> tuple[int, int]:
    """A dims (m1, n1) of a Kronecker sum of `factors` terms for an (out, in) matrix that keeps
    about `params` factor parameters (docs/families.md, "Choosing Kronecker dims for a budget").

    Candidates are the divisor pairs whose r * (m1*n1 + m2*n2) is within `tolerance` of
    `params`; among them, in order:

    1. the largest attainable rank (`max_rank`): a budget is no use if the product cannot
       span the matrix;
    2. B splitting only the wider side (B (k, 1) for an expand matrix, (1, k) for a contract
       one): each A row is then a group of whole hidden neurons, and the pruning init keeps
       whole neurons;
    3. the parameter count nearest `params`;
    4. the fewest multiply-adds per token (the cheaper factored path);
    5. the larger m1 (a fixed order).

    A wide matrix (out < in) is solved transposed and its answer transposed back, so a contract
    matrix gets its expand partner's dims transposed and the pair fuses. ValueError, naming
    the nearest attainable budgets, when no pair is within tolerance.
    """
    if out_features < in_features:
        n1, m1 = choose_dims(in_features, out_features, params, factors, tolerance)
        return m1, n1
    r = factors
    candidates = []
    for m1 in _divisors(out_features):
        for n1 in _divisors(in_features):
            m2, n2 = out_features // m1, in_features // n1
            count = r * (m1 * n1 + m2 * n2)
            costs = path_costs(m1, n1, m2, n2, r)
            cost = min(costs["a_first"], costs["b_first"])
            candidates.append((count, (m1, n1), cost, n2 == 1))
    close = [c for c in candidates if abs(c[0] - params) <= tolerance * params]
    if not close:
        total = out_features * in_features
        near = sorted({c[0] for c in candidates}, key=lambda n: abs(n - params))[:3]
        raise ValueError(f"no Kronecker dims of ({out_features}, {in_features}) with {r} factor(s) keep "
                         f"{params / total:.1%} of it within {tolerance:.0%}; nearest: "
                         f"{', '.join(f'{n / total:.1%}' for n in sorted(near))} (try other factors, or structure=lowrank)")
    best = max(close, key=lambda c: (max_rank(out_features, in_features, c[1], r), c[3], -abs(c[0] - params),
                                     -c[2], c[1][0]))
    return best[1]


def max_factors(init: str, a_dims: tuple[int, int], b_dims: tuple[int, int]) -> int | None:
    """The most factors an init can give for A (m1, n1), B (m2, n2): prune one per entry of B
    (m2*n2), Van Loan the rank of the rearranged matrix (min(m1*n1, m2*n2)); None: no limit."""
    (m1, n1), (m2, n2) = a_dims, b_dims
    return {"prune": m2 * n2, "vanloan": min(m1 * n1, m2 * n2)}.get(init)


def check_init(init: str, a_dims: tuple[int, int], b_dims: tuple[int, int], factors: int,
               options: dict[str, Any] | None = None, what: str = "matrix") -> None:
    """ValueError when `init` cannot give `factors` factors for these dims, or prune's offsets
    do not fit B: the rules the inits apply, checked before any weight is read."""
    limit = max_factors(init, a_dims, b_dims)
    if limit is not None and factors > limit:
        bound = "m2*n2" if init == "prune" else "min(m1*n1, m2*n2)"
        raise ValueError(f"{init} init gives at most {bound} = {limit} factors for A {tuple(a_dims)}, "
                         f"B {tuple(b_dims)} of {what}; got factors={factors}")
    offsets = (options or {}).get("offsets") if init == "prune" else None
    if offsets is not None:
        check_offsets(offsets, factors, b_dims, what)


def check_offsets(offsets: Sequence[Sequence[int]], factors: int, b_dims: tuple[int, int], what: str = "matrix") -> None:
    """ValueError unless `offsets` are `factors` distinct (p, q) positions inside B (m2, n2)."""
    m2, n2 = b_dims
    offs = [tuple(int(v) for v in o) for o in offsets]
    if len(offs) != factors or len(set(offs)) != factors:
        raise ValueError(f"prune needs {factors} distinct offsets (p, q), one per factor; got {offs}")
    for p, q in offs:
        if not (0 <= p < m2 and 0 <= q < n2):
            raise ValueError(f"prune offset ({p}, {q}) is outside B ({m2}, {n2}) of {what}: need 0 <= p < {m2}, 0 <= q < {n2}")


__all__ = ["FFN_PREFIX", "NAMED", "SCHEMES", "TABLE1", "Scheme", "check_dims", "check_init", "check_offsets", "choose_dims",
           "dims_key", "get_scheme", "max_factors", "max_rank", "parse_fraction", "path_costs"]
