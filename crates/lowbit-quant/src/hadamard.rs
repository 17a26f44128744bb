//! Randomized Hadamard rotations: the implementation lives in `lowbit_cpu::hadamard`, because the
//! runtime applies the same rotations online (rotated checkpoints); re-exported here for the
//! quantizer.

pub use lowbit_cpu::hadamard::*;
