//! The one check step of a loaded config, shared by `check-config`, start-up
//! (`serve`, `local`) and reload: the model's own checks (`config::validate`)
//! and the `[identity]` checks that read the environment and local files
//! (`identity::check`), every problem reported at once, in file order.

use std::collections::BTreeMap;

use crate::config::Config;
use crate::config::validate::{self, Problem, Problems};

/// Every problem of `config`; `env` is the process environment.
pub fn config(config: &Config, env: &BTreeMap<String, String>) -> Vec<Problem> {
    let mut p = Problems::default();
    validate::check_before_identity(config, &mut p);
    crate::identity::check::check(&config.identity, env, &mut p);
    validate::check_after_identity(config, env, &mut p);
    p.0
}
