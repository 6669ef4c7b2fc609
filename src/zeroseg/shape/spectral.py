"""Spectral decomposition of an image graph: the shape prior of SAZS.

SAZS (Liu et al., "Delving into Shape-aware Zero-shot Semantic Segmentation", CVPR 2023) takes
the eigenvectors of a Laplacian built on self-supervised pixel features, following Deep Spectral
Methods (Melas-Kyriazi et al., CVPR 2022). The affinity is a weighted sum of terms:

    W = a_f * W_feat + a_c * W_colour (+ a_g * W_grid)

* ``W_feat = P relu(F F^T) P^T``: cosine affinities of the L2-normalised patch features ``F``
  thresholded at zero as Deep Spectral does, lifted from the patch grid to the graph's pixels by
  the bilinear interpolation matrix ``P``. Deep Spectral upsamples the features first and forms a
  dense ``n x n`` matrix; ``P A P^T`` equals that wherever neighbouring patches have non-negative
  similarity, and it is never materialised, so the graph stays sparse plus low-rank.
* ``W_colour``: a kNN graph over ``(rgb / colour_sigma, xy / position_sigma)`` of the downsampled
  image with Gaussian weights ``exp(-d^2 / 2)``, symmetrised as ``K + K^T``. Deep Spectral adds
  the same kind of KNN-matting affinity (with weight ``image_color_lambda``) but with binary
  weights at two fixed scales; the Gaussian weights and the sigmas make one scale tunable.
* ``W_grid``: a weak 4-connected pixel grid that keeps the graph connected, so the trivial
  eigenvector is unique and a region that the other terms cut off shows up as a small non-trivial
  eigenvalue instead of a degenerate null space.

Each term is scaled to unit mean degree before weighting, so the weights are shares that do not
depend on the graph size or the number of patches.

We solve the generalised problem of Shi & Malik's normalised cut, as Deep Spectral does
(``eigsh(D - W, M=D)``):

    (D - W) x = lambda D x,

through its symmetric form ``L_sym y = lambda y`` with ``L_sym = I - D^-1/2 W D^-1/2`` and
``x = D^-1/2 y``. The trivial solution ``x = 1`` (``y = D^1/2 1``) is deflated explicitly, and the
``k`` smallest remaining eigenpairs are returned.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors import safe_open
from safetensors.numpy import save_file
from scipy.sparse.linalg import ArpackError, ArpackNoConvergence, LinearOperator, eigsh, lobpcg
from scipy.spatial import cKDTree
from tqdm import tqdm

from zeroseg._checks import check_minimum

# Bumped whenever the decomposition or the file layout changes, so stale caches miss.
CACHE_FORMAT_VERSION = "1"

# Graphs at most this large are solved densely: exact and faster than an iterative solver.
_DENSE_MAX_NODES = 256


@dataclass
class SpectralConfig:
    """Affinity graph and eigensolver settings."""

    num_eigenvectors: int = 8  # k smallest non-trivial eigenpairs to return
    knn: int = 10  # neighbours per pixel in the colour/position kNN graph
    feature_weight: float = 1.0  # share of the semantic feature term relu(F F^T) (if features)
    color_weight: float = 1.0  # share of the colour/position kNN term (0 disables it)
    connect_weight: float = 1e-3  # share of the 4-connected grid that keeps the graph connected
    position_sigma: float = 0.05  # kNN length scale of position, in units of the graph's long side
    colour_sigma: float = 0.1  # kNN length scale of RGB colour in [0, 1]
    max_side: int = 64  # the graph is built on the image downsampled to this longest side
    solver: Literal["eigsh", "lobpcg"] = "eigsh"  # iterative solver for graphs > 256 nodes
    tol: float = 1e-8  # eigensolver tolerance (looser ones can miss near-degenerate eigenvalues)
    seed: int = 0  # seed of the solver's start vectors (fixed, so results are deterministic)

    def __post_init__(self) -> None:
        check_minimum(self, ("num_eigenvectors", "knn"), 1)
        check_minimum(self, ("feature_weight", "color_weight", "connect_weight"), 0)
        check_minimum(self, ("position_sigma", "colour_sigma", "tol"), 0, strict=True)
        check_minimum(self, ("max_side",), 2)
        if self.solver not in ("eigsh", "lobpcg"):
            raise ValueError(
                f"SpectralConfig.solver must be 'eigsh' or 'lobpcg', got {self.solver!r}"
            )


@dataclass
class Eigen:
    """Non-trivial eigenpairs of ``(D - W) x = lambda D x`` for one image.

    Attributes:
        eigenvalues: (k,) float32, ascending, in [0, 2].
        eigenvectors: (k, H, W) float32 at image size (bilinear upsampling of
            ``graph_eigenvectors``).
        graph_size: (h, w) of the graph the problem was solved on.
        graph_eigenvectors: (k, h, w) float32 on the graph; each scaled to unit RMS, with its sign
            fixed so that its positive side is the smaller one (Deep Spectral's convention: the
            positive side is the candidate object); exactly balanced vectors make their
            largest-magnitude entry positive.
    """

    eigenvalues: np.ndarray
    eigenvectors: np.ndarray
    graph_size: tuple[int, int]
    graph_eigenvectors: np.ndarray

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self.eigenvectors.shape[1]), int(self.eigenvectors.shape[2]))


def graph_size_for(image_size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """Graph grid for an image: downsampled so its long side is at most ``max_side``, never up."""
    H, W = image_size
    scale = min(1.0, max_side / max(H, W))
    return max(1, round(H * scale)), max(1, round(W * scale))


def spectral_decomposition(
    image: np.ndarray, features: torch.Tensor | None, cfg: SpectralConfig
) -> Eigen:
    """Eigenvectors of the image's normalised graph Laplacian.

    Args:
        image: (H, W, 3) uint8 RGB.
        features: (h_f, w_f, C) patch features covering the whole image (e.g. DINO keys), or
            None for a colour-only graph. They are L2-normalised here.
        cfg: graph and solver settings.

    Returns:
        ``Eigen`` with the ``cfg.num_eigenvectors`` smallest non-trivial eigenpairs.
    """
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"spectral_decomposition: image must be an (H, W, 3) array, got {shape}")
    if image.dtype != np.uint8:
        raise ValueError(
            f"spectral_decomposition: image must be uint8 RGB, got dtype {image.dtype}"
        )
    H, W = image.shape[:2]
    h, w = graph_size_for((H, W), cfg.max_side)
    n = h * w
    k = cfg.num_eigenvectors
    if k > n - 2:
        raise ValueError(
            f"spectral_decomposition: num_eigenvectors={k} needs a graph of more than {k + 1} "
            f"nodes, but the graph of this {H}x{W} image is {h}x{w}"
        )

    small = image if (h, w) == (H, W) else _resize_rgb(image, (h, w))
    rgb = small.reshape(n, 3).astype(np.float64) / 255.0

    feature_op = None
    if features is not None and cfg.feature_weight > 0:
        feature_op = _feature_operator(features, (h, w))
    sparse_terms: list[tuple[float, sp.csr_matrix]] = []
    if cfg.color_weight > 0:
        sparse_terms.append((cfg.color_weight, _knn_affinity(rgb, (h, w), cfg)))
    if feature_op is None and not sparse_terms:
        raise ValueError(
            "spectral_decomposition: no affinity term is active; give features with "
            "feature_weight > 0 or set color_weight > 0"
        )
    if cfg.connect_weight > 0:
        sparse_terms.append((cfg.connect_weight, _grid_affinity((h, w))))

    # Scale each term to unit mean degree so the weights are shares (see module docstring).
    # The sparse terms are summed into one matrix; the feature term stays matrix-free.
    ones = np.ones(n)
    sparse_part = sp.csr_matrix((n, n))
    for weight, matrix in sparse_terms:
        mean_degree = float(matrix.sum()) / n
        if mean_degree > 0:
            sparse_part = sparse_part + (weight / mean_degree) * matrix
    degree = np.asarray(sparse_part.sum(axis=1)).ravel()
    feature_scale = 0.0
    if feature_op is not None:
        feature_degree = feature_op(ones)
        mean_degree = float(feature_degree.mean())
        if mean_degree > 0:
            feature_scale = cfg.feature_weight / mean_degree
            degree = degree + feature_scale * feature_degree
    if not np.any(degree > 0):
        raise ValueError("spectral_decomposition: every affinity term of this image is empty")
    # A node with no edge at all (possible only with connect_weight=0) gets a unit self-degree so
    # the normalisation stays finite; it then sits at eigenvalue 1, away from the small ones.
    degree = np.where(degree > 1e-12, degree, 1.0)
    inv_sqrt = 1.0 / np.sqrt(degree)
    trivial = np.sqrt(degree)
    trivial /= np.linalg.norm(trivial)
    scale = sp.diags(inv_sqrt)
    sparse_normalised = (scale @ sparse_part @ scale).tocsr()

    def normalised(x: np.ndarray) -> np.ndarray:  # D^-1/2 W D^-1/2 x, for (n,) or (n, b)
        out = sparse_normalised @ x
        if feature_scale > 0:
            s = inv_sqrt if x.ndim == 1 else inv_sqrt[:, None]
            out = out + feature_scale * (s * feature_op(s * x))
        return out

    if n <= _DENSE_MAX_NODES:
        lam, y = _solve_dense(normalised, trivial, n, k)
    elif cfg.solver == "eigsh":
        lam, y = _solve_eigsh(normalised, trivial, n, k, cfg)
    else:
        lam, y = _solve_lobpcg(normalised, trivial, n, k, cfg)

    x = inv_sqrt[:, None] * y  # back to the generalised problem's eigenvectors
    x = x / np.sqrt(np.mean(x**2, axis=0, keepdims=True)).clip(min=1e-30)
    x = _fix_signs(x)
    graph_vecs = x.T.reshape(k, h, w).astype(np.float32)
    return Eigen(
        eigenvalues=np.clip(lam, 0.0, 2.0).astype(np.float32),
        eigenvectors=upsample_eigenvectors(graph_vecs, (H, W)),
        graph_size=(h, w),
        graph_eigenvectors=graph_vecs,
    )


def upsample_eigenvectors(graph_vecs: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """Bilinear upsampling ``(k, h, w) -> (k, H, W)`` float32 (the same as the cache applies)."""
    if tuple(graph_vecs.shape[1:]) == tuple(image_size):
        return np.array(graph_vecs, dtype=np.float32)  # a copy: no aliasing with the input
    t = torch.from_numpy(np.ascontiguousarray(graph_vecs, dtype=np.float32))[None]
    up = F.interpolate(t, size=tuple(image_size), mode="bilinear", align_corners=False)
    return up[0].numpy()


# --------------------------------------------------------------------------------- graph terms


def _resize_rgb(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    # PIL's bilinear filter widens its support when shrinking, so this is an antialiased
    # downsample: pixel noise averages out instead of aliasing into the graph.
    h, w = size
    return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))


def _knn_affinity(rgb: np.ndarray, size: tuple[int, int], cfg: SpectralConfig) -> sp.csr_matrix:
    h, w = size
    n = h * w
    yy, xx = np.mgrid[0:h, 0:w]
    pos = np.stack([yy.ravel(), xx.ravel()], axis=1) / max(h, w)
    feats = np.concatenate([rgb / cfg.colour_sigma, pos / cfg.position_sigma], axis=1)
    k = min(cfg.knn, n - 1)
    # Query k + 1 because each point's nearest neighbour is itself (distance 0).
    dist, idx = cKDTree(feats).query(feats, k=k + 1)
    dist, idx = dist[:, 1:], idx[:, 1:]
    rows = np.repeat(np.arange(n), k)
    knn = sp.csr_matrix((np.exp(-0.5 * dist.ravel() ** 2), (rows, idx.ravel())), shape=(n, n))
    return (knn + knn.T).tocsr()


def _grid_affinity(size: tuple[int, int]) -> sp.csr_matrix:
    h, w = size
    ids = np.arange(h * w).reshape(h, w)
    a = np.concatenate([ids[:, :-1].ravel(), ids[:-1, :].ravel()])
    b = np.concatenate([ids[:, 1:].ravel(), ids[1:, :].ravel()])
    grid = sp.csr_matrix((np.ones(a.size), (a, b)), shape=(h * w, h * w))
    return (grid + grid.T).tocsr()


def _interp_matrix_1d(n_out: int, n_in: int) -> sp.csr_matrix:
    # Interpolating the identity gives exactly torch's linear weights (align_corners=False).
    eye = torch.eye(n_in, dtype=torch.float64)[:, None, :]  # (n_in, 1, n_in)
    cols = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0, :]
    return sp.csr_matrix(cols.T.numpy())  # (n_out, n_in)


def _feature_operator(
    features: torch.Tensor | np.ndarray, size: tuple[int, int]
) -> Callable[[np.ndarray], np.ndarray]:
    if isinstance(features, np.ndarray):
        features = torch.from_numpy(features)
    if not isinstance(features, torch.Tensor) or features.ndim != 3:
        shape = getattr(features, "shape", type(features).__name__)
        raise ValueError(
            f"spectral_decomposition: features must be an (h_f, w_f, C) tensor, got {shape}"
        )
    hf, wf, c = features.shape
    f = features.detach().to("cpu", torch.float64).reshape(hf * wf, c)
    f = F.normalize(f, dim=1).numpy()
    sim = f @ f.T
    sim *= sim > 0  # Deep Spectral thresholds feature affinities at zero
    # Bilinear interpolation on a grid is separable: P = P_rows kron P_cols.
    interp = sp.kron(_interp_matrix_1d(size[0], hf), _interp_matrix_1d(size[1], wf)).tocsr()
    interp_t = interp.T.tocsr()

    def apply(x: np.ndarray) -> np.ndarray:
        # einsum's own single-threaded loop, not BLAS: a matrix-vector product is memory-bound,
        # and on a loaded machine multithreaded OpenBLAS measured ~20x slower (16 ms vs 0.8 ms
        # for 1024 x 1024) as its threads wait for cores.
        z = interp_t @ x
        return interp @ np.einsum("ij,j...->i...", sim, z)

    return apply


# ------------------------------------------------------------------------------------- solvers


def _solve_dense(
    normalised: Callable[[np.ndarray], np.ndarray], trivial: np.ndarray, n: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    lap = np.eye(n) - normalised(np.eye(n))
    lap = 0.5 * (lap + lap.T)
    # Lifting the trivial direction to eigenvalue 3 (> 2 >= any eigenvalue of L_sym) deflates it.
    lap += 3.0 * np.outer(trivial, trivial)
    lam, vecs = np.linalg.eigh(lap)
    return lam[:k], vecs[:, :k]


def _solve_eigsh(
    normalised: Callable[[np.ndarray], np.ndarray],
    trivial: np.ndarray,
    n: int,
    k: int,
    cfg: SpectralConfig,
) -> tuple[np.ndarray, np.ndarray]:
    # The smallest eigenvalues of L_sym are the largest of M = (I + N) / 2, whose spectrum is in
    # [0, 1]. Lanczos finds that end without shift-invert (which needs a sparse factorisation
    # that the low-rank feature term rules out, and measured no faster on colour-only graphs) or
    # the slow which="SM". The trivial eigenvector (mu = 1) is projected out so it drops to
    # mu = 0, the far end. A tight tol matters: at 1e-6 Lanczos sometimes skipped one of several
    # nearly equal eigenvalues (nearly cut regions), which a dense solve showed.
    def matvec(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        proj = trivial @ x
        out = 0.5 * (x + normalised(x))
        return out - (np.outer(trivial, proj) if x.ndim == 2 else trivial * proj)

    op = LinearOperator((n, n), matvec=matvec, matmat=matvec, dtype=np.float64)
    v0 = np.random.default_rng(cfg.seed).standard_normal(n)
    try:
        mu, vecs = eigsh(op, k=k, which="LA", v0=v0, tol=cfg.tol, ncv=min(n, max(2 * k + 1, 24)))
    except (ArpackNoConvergence, ArpackError):
        return _solve_lobpcg(normalised, trivial, n, k, cfg)
    order = np.argsort(-mu)
    return 2.0 - 2.0 * mu[order], vecs[:, order]


def _solve_lobpcg(
    normalised: Callable[[np.ndarray], np.ndarray],
    trivial: np.ndarray,
    n: int,
    k: int,
    cfg: SpectralConfig,
) -> tuple[np.ndarray, np.ndarray]:
    def matvec(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        return x - normalised(x)

    op = LinearOperator((n, n), matvec=matvec, matmat=matvec, dtype=np.float64)
    x0 = np.random.default_rng(cfg.seed).standard_normal((n, k))
    # The constraint Y keeps the iterates orthogonal to the trivial eigenvector.
    lam, vecs = lobpcg(
        op, x0, Y=trivial[:, None], largest=False, tol=cfg.tol, maxiter=2000, verbosityLevel=0
    )
    order = np.argsort(lam)
    return lam[order], vecs[:, order]


def _fix_signs(x: np.ndarray) -> np.ndarray:
    """Make each column's positive side the smaller one; ties: largest |entry| positive."""
    n = x.shape[0]
    out = x.copy()
    for j in range(x.shape[1]):
        col = x[:, j]
        frac = float(np.mean(col > 0))
        if abs(frac - 0.5) <= 0.5 / n:
            flip = col[np.argmax(np.abs(col))] < 0
        else:
            flip = frac > 0.5
        if flip:
            out[:, j] = -col
    return out


# --------------------------------------------------------------------------------------- cache


def config_hash(cfg: SpectralConfig, *, feature_key: str = "") -> str:
    """Cache key of a decomposition: the config, the feature source and the format version.

    Args:
        cfg: the spectral settings.
        feature_key: names the features fed to the graph (e.g. ``"dino_vits16/k/layer-1"``),
            since they change the eigenvectors as much as the config does; "" for colour-only.
    """
    payload = {"version": CACHE_FORMAT_VERSION, "config": asdict(cfg), "features": feature_key}
    blob = json.dumps(payload, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class EigenCache:
    """Eigenvectors per image id, as ``<root>/<config_key>/<quoted id>.safetensors``.

    The graph-resolution eigenvectors are stored (fp16 by default) and upsampled on load with
    ``upsample_eigenvectors``, the same step ``spectral_decomposition`` applies, so a cached
    ``Eigen`` equals a fresh one up to the storage precision.
    """

    def __init__(
        self,
        root: str | Path,
        config_key: str,
        *,
        dtype: Literal["float16", "float32"] = "float16",
        config: SpectralConfig | None = None,
    ) -> None:
        """Args:
        root: cache root directory.
        config_key: the key (see ``config_hash``); each key gets its own sub-directory.
        dtype: storage precision of the eigenvectors.
        config: the config behind ``config_key``, if known; ``precompute`` checks it.
        """
        if not config_key or any(c in config_key for c in "/\\") or config_key in (".", ".."):
            raise ValueError(f"EigenCache: config_key must be a plain name, got {config_key!r}")
        if dtype not in ("float16", "float32"):
            raise ValueError(f"EigenCache: dtype must be 'float16' or 'float32', got {dtype!r}")
        self.config_key = config_key
        self.directory = Path(root) / config_key
        self.dtype = dtype
        self.config = config

    @classmethod
    def for_config(
        cls, root: str | Path, cfg: SpectralConfig, *, feature_key: str = "", **kwargs
    ) -> EigenCache:
        """A cache keyed by ``config_hash(cfg, feature_key=feature_key)``."""
        return cls(root, config_hash(cfg, feature_key=feature_key), config=cfg, **kwargs)

    def path(self, image_id: str) -> Path:
        if not image_id or image_id in (".", ".."):
            raise ValueError(f"EigenCache: invalid image id {image_id!r}")
        return self.directory / (urllib.parse.quote(image_id, safe="") + ".safetensors")

    def __contains__(self, image_id: str) -> bool:
        return self.path(image_id).is_file()

    def get(self, image_id: str) -> Eigen | None:
        """The cached ``Eigen`` of ``image_id``, or None if it was never stored."""
        path = self.path(image_id)
        if not path.is_file():
            return None
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if meta.get("config_key") != self.config_key or meta.get("image_id") != image_id:
                raise ValueError(
                    f"EigenCache: {path} holds config_key={meta.get('config_key')!r}, "
                    f"image_id={meta.get('image_id')!r}; expected {self.config_key!r}, "
                    f"{image_id!r}"
                )
            missing = {"eigenvalues", "graph_eigenvectors", "image_size"} - set(f.keys())
            if missing:
                raise ValueError(f"EigenCache: {path} lacks tensors {sorted(missing)}")
            eigenvalues = f.get_tensor("eigenvalues").astype(np.float32)
            graph_vecs = f.get_tensor("graph_eigenvectors").astype(np.float32)
            image_size = tuple(int(v) for v in f.get_tensor("image_size"))
        if graph_vecs.ndim != 3 or graph_vecs.shape[0] != eigenvalues.shape[0]:
            raise ValueError(
                f"EigenCache: {path} has eigenvectors {graph_vecs.shape} for eigenvalues "
                f"{eigenvalues.shape}; expected (k, h, w) and (k,)"
            )
        return Eigen(
            eigenvalues=eigenvalues,
            eigenvectors=upsample_eigenvectors(graph_vecs, image_size),
            graph_size=(int(graph_vecs.shape[1]), int(graph_vecs.shape[2])),
            graph_eigenvectors=graph_vecs,
        )

    def put(self, image_id: str, eigen: Eigen) -> Path:
        """Store ``eigen`` atomically (a temporary file, then ``os.replace``)."""
        path = self.path(image_id)
        self.directory.mkdir(parents=True, exist_ok=True)
        tensors = {
            "eigenvalues": np.ascontiguousarray(eigen.eigenvalues, dtype=np.float32),
            "graph_eigenvectors": np.ascontiguousarray(eigen.graph_eigenvectors, dtype=self.dtype),
            "image_size": np.asarray(eigen.image_size, dtype=np.int64),
        }
        meta = {
            "config_key": self.config_key,
            "image_id": image_id,
            "format": CACHE_FORMAT_VERSION,
        }
        fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".tmp-", suffix=".safetensors")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=meta)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path


def precompute(
    dataset_iter: Iterable[tuple[str, np.ndarray, torch.Tensor | None]],
    cache: EigenCache,
    cfg: SpectralConfig,
    progress: bool = True,
) -> int:
    """Decompose every image not yet in ``cache``.

    Args:
        dataset_iter: ``(image_id, image (H, W, 3) uint8, features (h_f, w_f, C) or None)``.
        cache: where to store the results; its ``config``, when set, must equal ``cfg``.
        cfg: the spectral settings.
        progress: show a tqdm bar.

    Returns:
        The number of images decomposed and written (already cached ones are skipped).
    """
    if cache.config is not None and cache.config != cfg:
        raise ValueError(
            f"precompute: cache {cache.directory} was made for {cache.config}, not for {cfg}"
        )
    total = len(dataset_iter) if hasattr(dataset_iter, "__len__") else None
    written = 0
    bar = tqdm(dataset_iter, total=total, desc="eigenvectors", unit="img", disable=not progress)
    for image_id, image, features in bar:
        if image_id in cache:
            continue
        cache.put(image_id, spectral_decomposition(image, features, cfg))
        written += 1
    return written
