//! The end-to-end scenarios on the async-std runtime.

mod e2e;

e2e::e2e_suite!(p2p_copy_tests::AsyncStd);
