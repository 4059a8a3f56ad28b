//! The text spellings of [`SchedulerKind`] (`ddim`, `euler-a`, `dpmpp-2m-karras`, ...) and
//! [`TimestepSpacing`] (`leading`, `linspace`, `trailing`), as `texgen` flags and request files
//! write them: their `FromStr` impls, case-insensitive.

use crate::error::{DiffusionError, Result};
use crate::schedulers::{SchedulerKind, TimestepSpacing};

impl std::str::FromStr for SchedulerKind {
    type Err = DiffusionError;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "ddim" => SchedulerKind::Ddim,
            "euler" => SchedulerKind::Euler,
            "euler-a" | "euler_a" | "euler-ancestral" => SchedulerKind::EulerAncestral,
            "dpmpp-2m" | "dpm++2m" | "dpmpp_2m" => SchedulerKind::DpmSolverMultistep,
            "dpmpp-2m-karras" | "dpm++2m-karras" | "dpmpp_2m_karras" => {
                SchedulerKind::DpmSolverMultistepKarras
            }
            "lcm" => SchedulerKind::Lcm,
            _ => return Err(DiffusionError::UnknownScheduler(s.to_string())),
        })
    }
}

impl std::str::FromStr for TimestepSpacing {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "leading" => Ok(TimestepSpacing::Leading),
            "linspace" => Ok(TimestepSpacing::Linspace),
            "trailing" => Ok(TimestepSpacing::Trailing),
            other => Err(format!(
                "unknown timestep spacing `{other}`; expected leading, linspace or trailing"
            )),
        }
    }
}
