//! Safe launchers of the ssd kernels (being written).
