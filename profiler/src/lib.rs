//! smolder (in progress).
