//! Guides, as documentation only.

pub mod pytorch_users;
