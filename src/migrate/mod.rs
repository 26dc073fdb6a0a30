//! Moving a container to another runvz (the vzmigrate idea): the connection between the two
//! ends (`wire`), how they prove to each other that they share a secret (`auth`), and how the
//! rootfs and the checkpoint images travel (`tree`). The steps themselves (freeze, dump,
//! copy, restore, remove the source) are `container::migrate`.

pub mod auth;
pub mod tree;
pub mod wire;

pub use auth::Token;
pub use wire::{Conn, Msg, Offer, TreeDest};

#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("token file {path}: {what}")]
    Token { path: String, what: String },
    #[error("authentication: {0}")]
    Auth(String),
    #[error("migration protocol: {0}")]
    Protocol(String),
    #[error("migration connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("copying a tree: {0}")]
    Tree(String),
}
