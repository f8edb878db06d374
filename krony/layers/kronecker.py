"""The Kronecker-factored linear layer and the cost model that picks its forward path
(docs/method.md for the method, docs/performance.md for the paths and their costs).

A weight W of shape (out, in) = (m1*m2, n1*n2) is replaced by

    W = sum_i s_i * kron(A_i, B_i)        A_i: (m1, n1), B_i: (m2, n2)

and applied to a token x of `in` features without building W:

              n2                 n2          m2                  m2
          +--------+         +--------+   +-----+            +------+
     n1   |   X    |  ->  m1 |  A @ X |   | B^T | n2  =   m1 |  Y   |
          +--------+         +--------+   +-----+            +------+
      x reshaped (n1, n2)     A: (m1, n1)                  y reshaped (m1, m2)

    Y = A @ X @ B^T   i.e.  y[i1*m2 + i2] = sum_{j1, j2} A[i1, j1] B[i2, j2] x[j1*n2 + j2]

The two matrix products can be taken in either order, or W can be built once
per call and used in one dense matmul. Per token and factor, in multiply-adds:

    "b_first" (X @ B^T, then A @ .):   n1*n2*m2 + m1*n1*m2
    "a_first" (A @ X, then . @ B^T):   m1*n1*n2 + m1*n2*m2
    "dense"   (W @ x, W built once):   m1*m2*n1*n2   (not multiplied by r)

The factored paths cost r times their count with r factors. `choose_path`
picks the cheapest; building W (r*m1*m2*n1*n2 per call) is spread over all
the tokens of a call and left out of the count.

The factored paths run with the N tokens in the middle of the activation,
(n1, N, n2) -> (m1, N, m2) (`kron_matmul_factored`): each product is then one
large GEMM, forward and backward, with no layout copies, and `kron_ffn` keeps
an FFN's hidden state in that layout between its expand and contract matrices (SwiGLU's
gate and up included).
"""

from __future__ import annotations

import inspect
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from krony.layers.base import FactoredLinear, check_factors, random_std
from krony.layers.kronecker_init import get_init
from krony.schemes import check_dims, choose_dims, get_scheme, path_costs
from krony.structures import REGISTRY

Path = Literal["b_first", "a_first", "dense"]
PATHS: tuple[str, ...] = ("b_first", "a_first", "dense")


def choose_path(m1: int, n1: int, m2: int, n2: int, factors: int = 1) -> str:
    """The cheapest path by `path_costs`; ties go to the factored paths, b_first first."""
    costs = path_costs(m1, n1, m2, n2, factors)
    return min(PATHS, key=lambda p: costs[p])  # min keeps the first of equal costs


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The dtype autocast casts to on `device_type`, or None when autocast is off there (or the
    device has no autocast, as the meta device of FLOP counting)."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except RuntimeError:
        return None


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype products of `tensors` run in: autocast's dtype when autocast is on for their
    device (as for `F.linear`), else their promoted dtype. Custom autograd Functions cast their
    inputs to it, so their saved tensors, outputs and backward agree under bf16/fp16 autocast."""
    autocast = autocast_dtype(tensors[0].device.type)
    if autocast is not None:
        return autocast
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def kron_weight(A: torch.Tensor, B: torch.Tensor, scalars: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i s_i * kron(A_i, B_i) for A (r, m1, n1), B (r, m2, n2), scalars (r,) -> (m1*m2, n1*n2)."""
    r, m1, n1 = A.shape
    _, m2, n2 = B.shape
    if scalars is not None:
        A = A * scalars.view(r, 1, 1)
    W = torch.einsum("rac,rbd->abcd", A, B)  # (m1, m2, n1, n2)
    return W.reshape(m1 * m2, n1 * n2)


def to_factored(x: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    """(..., n1*n2) -> (n1, N, n2), a view where it can be: the layout `kron_matmul_factored` works in."""
    return x.reshape(-1, n1, n2).transpose(0, 1)  # (n1, N, n2)


def from_factored(y: torch.Tensor, lead: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """(m1, N, m2) -> (..., m1*m2) with the leading dims `lead`; copies unless m2 == 1."""
    m1, _, m2 = y.shape
    return y.transpose(0, 1).reshape(*lead, m1 * m2)  # (..., out)


class _OuterBias(torch.autograd.Function):
    """u (m1, N) times v (m2,) as an outer product, plus bias (m1, 1, m2) or None -> (m1, N, m2).

    The product of a factor dim of 1; autograd's own backward for the broadcast multiply
    would materialise two output-sized temporaries, this one uses two matrix-vector products.
    Inputs are cast to `compute_dtype` (autocast's under mixed precision), so the output is
    what a linear layer would give and the backward's products see one dtype.
    """

    @staticmethod
    def forward(ctx, u: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        dtype = compute_dtype(u, v)
        u, v = u.to(dtype), v.to(dtype)
        ctx.save_for_backward(u, v)
        ctx.has_bias = bias is not None
        u3, v3 = u.unsqueeze(2), v.view(1, 1, -1)
        return u3 * v3 if bias is None else torch.addcmul(bias.to(dtype), u3, v3)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        u, v = ctx.saved_tensors
        g = g.to(u.dtype)  # autograd casts each gradient back to its input's dtype
        m1, N, m2 = g.shape
        g2 = g.reshape(m1 * N, m2)
        gu = (g2 @ v).view(m1, N) if ctx.needs_input_grad[0] else None
        gv = g2.mT @ u.reshape(m1 * N) if ctx.needs_input_grad[1] else None
        gb = g.sum(1, keepdim=True) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gu, gv, gb


class _Contract(torch.autograd.Function):
    """x (M, K) @ v (K,) -> (M,): the product of a factor whose output dim is 1, with a backward
    that writes the input gradient as one broadcast multiply instead of a K=1 GEMM. Inputs are
    cast to `compute_dtype`, as in `_OuterBias`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        dtype = compute_dtype(x, v)
        x, v = x.to(dtype), v.to(dtype)
        ctx.save_for_backward(x, v)
        return x @ v

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        x, v = ctx.saved_tensors
        g = g.to(x.dtype)
        gx = g.unsqueeze(1) * v.unsqueeze(0) if ctx.needs_input_grad[0] else None
        gv = x.mT @ g if ctx.needs_input_grad[1] else None
        return gx, gv


def kron_matmul_factored(
    xp: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    scalars: torch.Tensor | None = None,
    path: str = "a_first",
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """Y = A X B^T (+ bias) for every token, tokens in the middle: xp (n1, N, n2) -> (m1, N, m2).

    With N between the two factor dims, both products are single large GEMMs (tokens
    merge with the dim that is not contracted), so no layout copies are needed in the
    forward or the backward, and the output of one layer is the input layout of the next
    (an expand layer's (m1, m2) is its contract partner's (n1, n2)). A dim of 1 turns a product into a broadcast
    multiply instead of a K=1 GEMM, and the bias (m1*m2,) is fused into the last product
    where one op can take it. r factors are r GEMM pairs summed; `path` is "a_first" or
    "b_first" (see `path_costs`).
    """
    r, m1, n1 = A.shape
    _, m2, n2 = B.shape
    N = xp.shape[1]
    dtype = compute_dtype(xp, A)
    bias3 = None if bias is None else bias.view(m1, 1, m2).to(dtype)
    if path == "a_first":
        Bs = B if scalars is None else B * scalars.view(r, 1, 1)  # scalars ride on the second factor
        U = A.reshape(r * m1, n1) @ xp.reshape(n1, N * n2)  # (r*m1, N*n2)
        if r == 1 and n2 == 1:  # outer product U (m1, N) x B (m2,), bias in the same op
            return _OuterBias.apply(U.view(m1, N), Bs.view(m2), bias3)
        if r == 1:  # one GEMM per row block of A, bias as the accumulator
            U = U.view(m1, N, n2)
            Bt = Bs[0].mT.expand(m1, n2, m2)
            return torch.bmm(U, Bt) if bias3 is None else torch.baddbmm(bias3, U, Bt)
        if n2 == 1:  # sum over factors of outer products: one GEMM with K = r
            Y = U.view(r, m1 * N).mT @ Bs.view(r, m2)  # (m1*N, m2)
        else:
            Y = U[:m1].view(m1 * N, n2) @ Bs[0].mT  # (m1*N, m2)
            for i in range(1, r):
                Y = torch.addmm(Y, U[i * m1 : (i + 1) * m1].view(m1 * N, n2), Bs[i].mT)
    elif path == "b_first":
        As = A if scalars is None else A * scalars.view(r, 1, 1)
        Y = None
        for i in range(r):
            if n2 == 1:
                T = xp.reshape(n1 * N, 1).to(dtype) * B[i].view(1, m2).to(dtype)  # (n1*N, m2)
            elif m2 == 1:
                T = _Contract.apply(xp.reshape(n1 * N, n2), B[i].view(n2))  # (n1*N,)
            else:
                T = xp.reshape(n1 * N, n2) @ B[i].mT  # (n1*N, m2)
            T = T.view(n1, N * m2)
            Y = As[i] @ T if Y is None else torch.addmm(Y, As[i], T)  # (m1, N*m2)
    else:
        raise ValueError(f"unknown factored path {path!r}; valid paths: a_first, b_first")
    Y = Y.view(m1, N, m2)
    return Y if bias3 is None else Y + bias3.to(Y.dtype)


def kron_matmul(
    x: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    scalars: torch.Tensor | None = None,
    path: str = "b_first",
    bias: torch.Tensor | None = None,
) -> torch.Tensor:
    """y = x @ W^T (+ bias) with W = sum_i s_i kron(A_i, B_i), computed along `path`.

    x: (..., n1*n2), A: (r, m1, n1), B: (r, m2, n2), scalars: (r,) or None, bias: (m1*m2,)
    or None -> (..., m1*m2).
    """
    if path == "dense":
        return F.linear(x, kron_weight(A, B, scalars), bias)
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; valid paths: {', '.join(PATHS)}")
    _, _, n1 = A.shape
    n2 = B.shape[2]
    y = kron_matmul_factored(to_factored(x, n1, n2), A, B, scalars, path, bias)  # (m1, N, m2)
    return from_factored(y, x.shape[:-1])


def check_active_factors(k: object, factors: int, where: str = "") -> None:
    """Raise unless `k` can be the active factor count of a layer with `factors` factors
    (`where`, e.g. the module name, starts the message)."""
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= factors:
        raise ValueError(f"{where}{': ' if where else ''}the factors to use must be an integer in 1..{factors} "
                         f"(the layer's factors), got {k!r}")


class KroneckerLinear(FactoredLinear):
    """A linear layer whose weight is sum_i s_i * kron(A_i, B_i), in `nn.Linear` layout (out, in).

    Args:
        in_features: n1 * n2.
        out_features: m1 * m2.
        a_dims: (m1, n1), the shape of each A_i; B_i is (out/m1, in/n1).
        factors: r >= 1, the number of Kronecker products summed.
        scalars: learn one scalar s_i per factor (initialised to 1); off means s_i = 1 fixed.
        bias: add a learnable bias of `out_features`.
        path: "auto" (cheapest by `path_costs`), "b_first", "a_first" or "dense".

    Parameters: `A` (r, m1, n1), `B` (r, m2, n2), `scalars` (r,) when enabled, `bias` (out,).
    """

    structure = "kronecker"
    stored_as_weight = "A"
    inits = REGISTRY["kronecker"].inits

    def __init__(
        self,
        in_features: int,
        out_features: int,
        a_dims: tuple[int, int],
        factors: int = 1,
        scalars: bool = False,
        bias: bool = True,
        path: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.factors = check_factors(factors)
        m2, n2 = check_dims(out_features, in_features, a_dims)
        self.in_features, self.out_features = in_features, out_features
        self.m1, self.n1 = int(a_dims[0]), int(a_dims[1])
        self.m2, self.n2 = m2, n2
        kw = {"device": device, "dtype": dtype}
        self.A = nn.Parameter(torch.empty(self.factors, self.m1, self.n1, **kw))
        self.B = nn.Parameter(torch.empty(self.factors, m2, n2, **kw))
        self.scalars = nn.Parameter(torch.ones(self.factors, **kw)) if scalars else None
        self.bias = nn.Parameter(torch.zeros(out_features, **kw)) if bias else None
        self.path = path  # validated by the setter below
        self._active: int | None = None  # factors in use (None: all); see `active_factors`
        self._weight_cache: tuple | None = None  # (factor versions, W) for gradient-free dense calls
        self.reset_parameters()

    @property
    def active_factors(self) -> int:
        """How many of the factors the layer uses, the first ones (all unless set): a nested model
        runs any prefix. Van Loan orders factors by singular value, so each prefix of its factors is
        the best approximation with that many terms."""
        return self.factors if self._active is None else self._active

    @active_factors.setter
    def active_factors(self, k: int | None) -> None:
        if k is not None:
            check_active_factors(k, self.factors)
        self._active = None if k == self.factors else k

    def active(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(A, B, scalars) of the active factors: the parameters themselves, or views of their first k."""
        k = self._active
        if k is None:
            return self.A, self.B, self.scalars
        return self.A[:k], self.B[:k], None if self.scalars is None else self.scalars[:k]

    @property
    def path(self) -> str:
        """The forward path: "auto" or one of `PATHS`."""
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if value != "auto" and value not in PATHS:
            raise ValueError(f"unknown path {value!r}; valid paths: auto, {', '.join(PATHS)}")
        self._path = value

    @property
    def a_dims(self) -> tuple[int, int]:
        return (self.m1, self.n1)

    @property
    def b_dims(self) -> tuple[int, int]:
        return (self.m2, self.n2)

    @property
    def chosen_path(self) -> str:
        """The path forward takes: `path` unless it is "auto", then the cheapest by the cost model."""
        if self._path != "auto":
            return self._path
        return choose_path(self.m1, self.n1, self.m2, self.n2, self.active_factors)

    def reset_parameters(self, std: float = 0.02) -> None:
        """Random factors whose Kronecker sum has entries of standard deviation `std`."""
        if self.A.is_meta:
            return
        factor_std = random_std(std, self.factors)
        with torch.no_grad():
            self.A.normal_(0.0, factor_std)
            self.B.normal_(0.0, factor_std)
            if self.scalars is not None:
                self.scalars.fill_(1.0)
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: torch.Tensor, path: str | None = None) -> torch.Tensor:
        """x: (..., in_features) -> (..., out_features); `path` overrides the layer's path for this call."""
        path = path or self.chosen_path
        if path == "dense":  # W kept between calls while gradients are off (see _dense_weight)
            return F.linear(x, self._dense_weight(), self.bias)
        return kron_matmul(x, *self.active(), path, self.bias)

    def forward_factored(self, xp: torch.Tensor) -> torch.Tensor:
        """The layer in the token-middle layout, on a factored path (see `fusable`):
        xp (n1, N, n2) -> (m1, N, m2), bias included."""
        return kron_matmul_factored(xp, *self.active(), self.chosen_path, self.bias)

    def _dense_weight(self) -> torch.Tensor:
        """`to_dense()`, kept between calls while gradients are off and the factors unchanged
        (generation feeds one token per call: rebuilding W each time would cost more than using it)."""
        if torch.is_grad_enabled() or torch.compiler.is_compiling():
            self._weight_cache = None
            return self.to_dense()
        params = [p for p in (self.A, self.B, self.scalars) if p is not None]
        key = (autocast_dtype(self.A.device.type), self.active_factors,
               *((p.data_ptr(), p._version, p.dtype, p.device) for p in params))
        cache = self._weight_cache
        if cache is None or cache[0] != key:
            cache = (key, self.to_dense())
            self._weight_cache = cache
        return cache[1]

    def to_dense(self) -> torch.Tensor:
        """The weight sum_i s_i kron(A_i, B_i) over the active factors, shape (out_features, in_features)."""
        return kron_weight(*self.active())

    @torch.no_grad()
    def load_factors(self, A: torch.Tensor, B: torch.Tensor, s: torch.Tensor | None = None) -> None:
        """Copy factors in: A (r, m1, n1), B (r, m2, n2), s (r,). Without learnable scalars, s is folded into A."""
        if tuple(A.shape) != tuple(self.A.shape) or tuple(B.shape) != tuple(self.B.shape):
            raise ValueError(
                f"factor shapes A {tuple(A.shape)}, B {tuple(B.shape)} do not match the layer's "
                f"A {tuple(self.A.shape)}, B {tuple(self.B.shape)}"
            )
        if s is None:
            s = torch.ones(self.factors, dtype=A.dtype, device=A.device)
        if self.scalars is not None:
            self.A.copy_(A)
            self.scalars.copy_(s)
        else:
            self.A.copy_(A * s.view(-1, 1, 1).to(A))
        self.B.copy_(B)

    def multiply_adds(self) -> int:
        """Multiply-adds per token of the chosen path (what FLOP counts should use: 2x this)."""
        return path_costs(self.m1, self.n1, self.m2, self.n2, self.active_factors)[self.chosen_path]

    @classmethod
    def build(cls, in_features: int, out_features: int, size: Any, role: str, bias: bool = True,
              device: torch.device | str | None = None, dtype: torch.dtype | None = None,
              **options: Any) -> "KroneckerLinear":
        """An uninitialised layer for an (out, in) matrix of `role`: A dims from a scheme (a contract
        matrix takes the expand dims transposed), or for a parameter count from `choose_dims`;
        `options`: factors, scalars, path."""
        if isinstance(size, int) and not isinstance(size, bool):
            a_dims = choose_dims(out_features, in_features, size, options.get("factors", 1))
        else:
            a_dims = get_scheme(size).a_dims_for(role)
        return cls(in_features, out_features, a_dims, bias=bias, device=device, dtype=dtype, **options)

    @staticmethod
    def fused_ffn(x: torch.Tensor, expand: list[nn.Module], contract: nn.Module, act: Any,
                  gated: bool) -> torch.Tensor | None:
        """`kron_ffn` when the layers are `fusable`, else None."""
        return kron_ffn(x, expand, contract, act, gated) if fusable(expand, contract) else None

    def init_from(self, W: torch.Tensor, method: str = "vanloan", **options: Any) -> None:
        """Factors from the dense weight W (out, in) by a Kronecker init (`krony.layers.kronecker_init`)."""
        fn = get_init(method)
        check_init_options(fn, options)
        self.load_factors(*fn(W, self.a_dims, self.factors, **options))

    def spec(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "a_dims": list(self.a_dims),
                "factors": self.factors, "scalars": self.scalars is not None, "bias": self.bias is not None}

    def extra_repr(self) -> str:
        active = f"active_factors={self._active}, " if self._active is not None else ""
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"A=({self.m1}, {self.n1}), B=({self.m2}, {self.n2}), factors={self.factors}, {active}"
            f"scalars={self.scalars is not None}, bias={self.bias is not None}, path={self.chosen_path}"
        )


def check_init_options(fn: Any, options: dict[str, Any]) -> None:
    """ValueError naming the options `fn` (an init function) does not take."""
    params = inspect.signature(fn).parameters
    valid = [p for p in params if p not in ("W", "a_dims", "factors")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"unknown options {unknown} for init {getattr(fn, '__name__', fn)!r}; valid options: {valid}")


def fusable(expand: nn.Module | list[nn.Module], contract: nn.Module) -> bool:
    """Whether `kron_ffn` can run the expand layer(s) and `contract` without leaving the
    token-middle layout: all Kronecker on a factored path, the expand layers with one shape,
    and the contract layer's input factorisation their output's."""
    expand = list(expand) if isinstance(expand, (list, tuple)) else [expand]
    layers = [*expand, contract]
    if not all(isinstance(m, KroneckerLinear) and m.chosen_path != "dense" for m in layers):
        return False
    first = expand[0]
    return (all((m.a_dims, m.b_dims) == (first.a_dims, first.b_dims) for m in expand)
            and (first.m1, first.m2) == (contract.n1, contract.n2))


def kron_ffn(x: torch.Tensor, expand: KroneckerLinear | list[KroneckerLinear], contract: KroneckerLinear,
             act: Any = None, gated: bool = False) -> torch.Tensor:
    """contract(act(e0(x))) for x (..., in), or with `gated` contract(act(e0(x)) * e1(x)) (SwiGLU),
    with one layout change in and one out (see `fusable`).

    The hidden activations stay (m1, N, m2): the expand layers' output factorisation is the
    contract layer's input factorisation, and an elementwise `act` or product does not care
    about the order of features.
    """
    expand = list(expand) if isinstance(expand, (list, tuple)) else [expand]
    xp = to_factored(x, expand[0].n1, expand[0].n2)  # (n1, N, n2)
    h = expand[0].forward_factored(xp)  # (m1, N, m2)
    if act is not None:
        h = act(h)
    if gated:
        h = h * expand[1].forward_factored(xp)
    return from_factored(contract.forward_factored(h), x.shape[:-1])  # (..., out)


__all__ = [
    "check_init_options",
    "compute_dtype",
    "from_factored",
    "fusable",
    "kron_ffn",
    "kron_matmul_factored",
    "to_factored",
    "KroneckerLinear",
    "PATHS",
    "check_dims",
    "choose_path",
    "kron_matmul",
    "kron_weight",
    "path_costs",
]
