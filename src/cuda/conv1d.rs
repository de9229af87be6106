//! Safe launchers of the conv1d kernels (being written).
