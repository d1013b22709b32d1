//! `driver_opts` -> typed `VolumeSpec`, with every refusal a user can act on: the types in `types`, the parser in `parse`.

mod parse;
mod types;

pub use parse::{
    format_size, parse, parse_flags, parse_keep, parse_size, OptionError, KEYS, MAX_VALUE_LEN,
    MOUNT_FLAGS,
};
pub use types::*;

#[cfg(test)]
mod tests;
