"""The compression schemes of the paper's Table 1 and Table 2, by name and by A dims.

A scheme is the shape of A for `c_fc`, (m1, n1); `c_proj`, the transposed matrix, uses
A = (n1, m1). The table below is the only place the rows are written; everything else
(names by dims, B dims, parameter counts) is derived from it. Every scheme with its size,
and the counting conventions: docs/method.md.
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
    """One row of Table 1: the A dims of `c_fc`, and the name the paper uses for it, if any."""

    a_dims: tuple[int, int]
    """(m1, n1): the shape of each A for `c_fc` (out=4d, in=d); `c_proj` uses (n1, m1)."""
    name: str = ""
    """The paper's name for the row ("67m", "81m", ...); rows without one go by dims."""

    @property
    def key(self) -> str:
        """The registry key: the name, or "m1x n1" dims such as "64x48"."""
        return self.name or dims_key(self.a_dims)

    def a_dims_for(self, module: str) -> tuple[int, int]:
        """A dims for `c_fc` or `c_proj` (the transposed shape)."""
        if module == "c_fc":
            return self.a_dims
        if module == "c_proj":
            return (self.a_dims[1], self.a_dims[0])
        raise ValueError(f"unknown FFN module {module!r}; valid choices: c_fc, c_proj")

    def b_dims_for(self, module: str, n_embd: int = 768, n_inner: int = 3072) -> tuple[int, int]:
        """B dims (m2, n2) of `module` in a model of width `n_embd` and FFN width `n_inner`."""
        out, inp = (n_inner, n_embd) if module == "c_fc" else (n_embd, n_inner)
        return check_dims(out, inp, self.a_dims_for(module), f"{module} weight")

    def params_per_matrix(self, factors: int = 1, n_embd: int = 768, n_inner: int = 3072) -> int:
        """Factor parameters of one FFN matrix (no scalars, no bias): r * (m1*n1 + m2*n2)."""
        m2, n2 = self.b_dims_for("c_fc", n_embd, n_inner)
        return factors * (self.a_dims[0] * self.a_dims[1] + m2 * n2)


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
    from krony.config import suggest

    names = [s.name for s in NAMED if s.name]
    raise ValueError(
        f"unknown scheme {scheme!r}{suggest(key, names)}: valid names: {', '.join(names)}; "
        f"or A dims of c_fc as 'm1xn1' (Table 1 rows: {', '.join(dims_key(s.a_dims) for s in TABLE1)})"
    )


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


__all__ = ["NAMED", "SCHEMES", "TABLE1", "Scheme", "check_dims", "check_init", "check_offsets", "dims_key", "get_scheme",
           "max_factors"]
