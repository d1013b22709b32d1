//! Filling a new volume from a template: another volume's data or a snapshot.

use std::path::Path;

use crate::config::{HostView, Layout};
use crate::options::Template;

/// Copy the template's content into `dest` (an empty, new directory), preserving owners and modes.
pub fn fill(
    _layout: &Layout,
    _view: &HostView,
    template: &Template,
    _dest: &Path,
) -> Result<(), String> {
    Err(format!("templates are not available in this build ({template:?}); create the volume without template="))
}
