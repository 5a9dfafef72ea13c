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
