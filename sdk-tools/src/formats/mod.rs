//! On-disk formats, one module each, shared by image building, boot, the
//! initramfs init and the tools' own verbs: dm-verity hash trees
//! (`verity`), GPT disk images and their layouts (`disk`), and filesystem
//! images (`fs`: the read-only ext4 writer and the mkfs backends), and
//! signed update metadata (`update`). They know nothing of boards, recipes
//! or the CLI.

pub mod disk;
pub mod fs;
pub mod update;
pub mod verity;
