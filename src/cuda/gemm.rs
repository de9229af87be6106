//! GEMMs through cuBLASLt: `x W^T` for the model's projections.
