//! STUB (owned by the schedulers helper).
use serde::{Deserialize, Serialize};
/// STUB
#[derive(Debug, Clone)]
pub struct SchedulerConfig {}
/// How timesteps are spread over the training range (diffusers' `timestep_spacing`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimestepSpacing { Leading, Linspace, Trailing }
/// What the UNet predicts (diffusers' `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum PredictionType {
    #[serde(rename = "epsilon")]
    Epsilon,
    #[serde(rename = "v_prediction")]
    VPrediction,
}
