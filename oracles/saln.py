"""SALN (Sharifi), Algorithm 1 exactly as printed: the oracle for the SALN selector's fast solver."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.metrics.pairwise import cosine_similarity


def saln_algorithm1(current_batch_data: torch.Tensor, filter_ratio: float = 0.8) -> np.ndarray:
    """SALN Algorithm 1 (Joint batch sampling using spectral analysis), as printed."""
    n_images = current_batch_data.size(0)
    batch_data = current_batch_data.detach().cpu()
    batch_data_flat = batch_data.view(n_images, -1).numpy()
    n_draws = int(n_images * (1 - filter_ratio))
    similarity_matrix = cosine_similarity(batch_data_flat)
    degree_matrix = np.diag(similarity_matrix.sum(axis=1))
    laplacian_matrix = degree_matrix - similarity_matrix
    eigenvalues, eigenvectors = np.linalg.eigh(laplacian_matrix)  # noqa: RUF059 (as printed)
    fiedler_vector = eigenvectors[:, 1]
    informative_indices = np.argsort(np.abs(fiedler_vector))[-n_draws:]
    return informative_indices


def saln_algorithm1_float64(current_batch_data, filter_ratio: float = 0.8) -> dict:
    """Algorithm 1's steps in float64, with what says whether its kept set is unique at all.

    The same computation as `saln_algorithm1` (sklearn's cosine similarity, np.diag, a full
    np.linalg.eigh, the top of argsort |v|) on float64 features, plus: the three smallest
    eigenvalues, the Fiedler gap min(lambda2 - lambda1, lambda3 - lambda2), and the margin between
    the k-th and (k+1)-th largest |v_i|. A zero gap (a repeated eigenvalue: the eigenvector is any
    vector of a plane) or a zero margin (a tie at the cut) leaves no unique kept set; `unique` is
    False where either is below what float64 can resolve."""
    batch = np.asarray(current_batch_data, dtype=np.float64)
    n_images = batch.shape[0]
    n_draws = int(n_images * (1 - filter_ratio))
    similarity_matrix = cosine_similarity(batch.reshape(n_images, -1))
    laplacian_matrix = np.diag(similarity_matrix.sum(axis=1)) - similarity_matrix
    eigenvalues, eigenvectors = np.linalg.eigh(laplacian_matrix)
    magnitude = np.abs(eigenvectors[:, 1])
    order = np.argsort(magnitude)
    kept = order[-n_draws:]
    margin = (
        magnitude[order[-n_draws]] - magnitude[order[-n_draws - 1]]
        if n_draws < n_images
        else float("inf")
    )
    gap = min(eigenvalues[1] - eigenvalues[0], eigenvalues[2] - eigenvalues[1])
    scale = max(1.0, float(np.abs(eigenvalues).max()))
    return {
        "kept": set(kept.tolist()),
        "eigenvalues": eigenvalues[:3],
        "gap": float(gap),
        "margin": float(margin),
        "unique": bool(gap > 1e-9 * scale and margin > 1e-12),
    }
