//! Safe launchers of the gated_norm kernels (being written).
