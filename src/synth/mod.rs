//! placeholder: the synthetic population arrives in the next commit.
