//! What the player sees besides the room: the camera, the side panel (player, model, frame
//! times, target, prompt field, notices, a row per request in flight with its preview and a
//! progress bar), the room's title and the help line. Only the binary adds it ([`DemoUiPlugin`]);
//! the game logic runs without it.

use bevy::prelude::*;
use bevy_diffusion::{DiffusionStatus, RequestId};

use crate::frame_stats::FrameStats;
use crate::input::PromptInput;
use crate::profiles::{Players, Target};
use crate::world::{Jobs, Notice, ROOM_CENTER, ROOM_COLS, ROOM_ROWS, TILE, bob_items};

/// Rows of requests in flight shown at once (the header counts them all).
pub const MAX_ROWS: usize = 7;

/// The help line.
pub const HELP: &str = "Type a prompt ({theme} = the player's)  |  Enter: generate  |  Backspace: edit  \
                        |  F1 floor  F2 wall  F3 item  |  F4 lit material  |  Tab: next player  |  Esc: cancel";

const PANEL_BG: Color = Color::srgba(0.06, 0.07, 0.09, 0.92);
const TEXT: Color = Color::srgb(0.88, 0.9, 0.92);
const DIM: Color = Color::srgb(0.55, 0.6, 0.66);
const ACCENT: Color = Color::srgb(0.98, 0.78, 0.3);
const BAR_BG: Color = Color::srgb(0.18, 0.2, 0.24);
const BAR_FILL: Color = Color::srgb(0.35, 0.8, 0.45);

#[derive(Component)]
struct PlayerText;
#[derive(Component)]
struct RoomTitle;
#[derive(Component)]
struct ModelText;
#[derive(Component)]
struct FrameText;
#[derive(Component)]
struct PromptText;
#[derive(Component)]
struct NoticeText;
#[derive(Component)]
struct JobsHeader;
#[derive(Component)]
struct JobList;
#[derive(Component)]
struct TargetChip(Target);
/// A row of the request in flight with this id.
#[derive(Component)]
struct JobRow(RequestId);
#[derive(Component)]
struct JobBar(RequestId);
#[derive(Component)]
struct JobStep(RequestId);

fn font(size: f32) -> TextFont {
    TextFont::from_font_size(size)
}

fn text(s: impl Into<String>, size: f32, color: Color) -> (Text, TextFont, TextColor) {
    (Text::new(s), font(size), TextColor(color))
}

/// The camera, the panel, the room title and the help line.
fn spawn_ui(mut commands: Commands) {
    commands.spawn(Camera2d);
    let room_left = 640.0 + ROOM_CENTER.x - ROOM_COLS as f32 * TILE / 2.0;
    let room_top = 360.0 - ROOM_CENTER.y - ROOM_ROWS as f32 * TILE / 2.0;
    commands.spawn((
        RoomTitle,
        text("", 26.0, ACCENT),
        Node {
            position_type: PositionType::Absolute,
            left: Val::Px(room_left),
            top: Val::Px(room_top - 40.0),
            ..default()
        },
    ));
    commands.spawn((
        text(HELP, 13.0, DIM),
        Node {
            position_type: PositionType::Absolute,
            left: Val::Px(16.0),
            bottom: Val::Px(12.0),
            right: Val::Px(16.0),
            ..default()
        },
    ));
    commands
        .spawn((
            Node {
                position_type: PositionType::Absolute,
                right: Val::Px(16.0),
                top: Val::Px(16.0),
                bottom: Val::Px(40.0),
                width: Val::Px(400.0),
                flex_direction: FlexDirection::Column,
                row_gap: Val::Px(8.0),
                padding: UiRect::all(Val::Px(12.0)),
                border_radius: BorderRadius::all(Val::Px(6.0)),
                ..default()
            },
            BackgroundColor(PANEL_BG),
        ))
        .with_children(|panel| {
            panel.spawn(text("bevy_diffusion demo", 22.0, TEXT));
            panel.spawn((PlayerText, text("", 15.0, TEXT)));
            panel.spawn((ModelText, text("model: loading", 14.0, DIM)));
            panel.spawn((FrameText, text("frame: -", 14.0, DIM)));
            panel
                .spawn(Node {
                    flex_direction: FlexDirection::Row,
                    column_gap: Val::Px(6.0),
                    margin: UiRect::top(Val::Px(6.0)),
                    ..default()
                })
                .with_children(|row| {
                    for (i, target) in Target::ALL.into_iter().enumerate() {
                        row.spawn((
                            TargetChip(target),
                            Node {
                                padding: UiRect::axes(Val::Px(8.0), Val::Px(3.0)),
                                border_radius: BorderRadius::all(Val::Px(4.0)),
                                ..default()
                            },
                            BackgroundColor(BAR_BG),
                        ))
                        .with_child(text(
                            format!("F{} {}", i + 1, target.name()),
                            14.0,
                            TEXT,
                        ));
                    }
                });
            panel
                .spawn((
                    Node {
                        padding: UiRect::all(Val::Px(8.0)),
                        border: UiRect::all(Val::Px(2.0)),
                        border_radius: BorderRadius::all(Val::Px(4.0)),
                        min_height: Val::Px(40.0),
                        ..default()
                    },
                    BorderColor::all(ACCENT),
                    BackgroundColor(Color::srgb(0.02, 0.02, 0.03)),
                ))
                .with_child((PromptText, text("", 16.0, TEXT)));
            panel.spawn((NoticeText, text("", 13.0, ACCENT)));
            panel.spawn((JobsHeader, text("", 15.0, TEXT)));
            panel.spawn((
                JobList,
                Node {
                    flex_direction: FlexDirection::Column,
                    row_gap: Val::Px(6.0),
                    ..default()
                },
            ));
        });
}

/// Rewrites a text only when it differs (text layout is not free).
fn set(text: &mut Text, value: String) {
    if text.0 != value {
        text.0 = value;
    }
}

#[allow(clippy::type_complexity, clippy::too_many_arguments)]
fn update_texts(
    time: Res<Time<Real>>,
    players: Res<Players>,
    status: Res<DiffusionStatus>,
    label: Res<ModelLabel>,
    stats: Res<FrameStats>,
    input: Res<PromptInput>,
    notice: Res<Notice>,
    jobs: Res<Jobs>,
    mut texts: ParamSet<(
        Single<&mut Text, With<PlayerText>>,
        Single<&mut Text, With<ModelText>>,
        Single<&mut Text, With<FrameText>>,
        Single<&mut Text, With<PromptText>>,
        Single<&mut Text, With<NoticeText>>,
        Single<&mut Text, With<JobsHeader>>,
        Single<&mut Text, With<RoomTitle>>,
    )>,
    mut last_stats: Local<f32>,
) {
    let now = time.elapsed_secs();
    set(
        &mut texts.p0(),
        format!("player: {}   [Tab]", players.describe_active()),
    );
    let model = match &*status {
        DiffusionStatus::Loading => format!("model: {} (loading...)", label.0),
        DiffusionStatus::Ready { identity } => {
            let short: String = identity.chars().take(8).collect();
            format!("model: {} (ready, {short})", label.0)
        }
        DiffusionStatus::Failed { reason } => format!("model FAILED: {reason}"),
    };
    set(&mut texts.p1(), model);
    if now - *last_stats >= 0.25 || *last_stats == 0.0 {
        *last_stats = now;
        if let Some(s) = stats.summary() {
            set(
                &mut texts.p2(),
                format!(
                    "frame ms: p50 {:.1} | p99 {:.1} | max {:.1} | {:.0} FPS",
                    s.p50_ms, s.p99_ms, s.max_ms, s.fps
                ),
            );
        }
    }
    let cursor = if ((now * 2.0) as u32).is_multiple_of(2) {
        "_"
    } else {
        " "
    };
    let prompt = if input.text.is_empty() {
        format!(
            "> {cursor}  (type a prompt for the {})",
            input.target.name()
        )
    } else {
        format!("> {}{cursor}", input.text)
    };
    set(&mut texts.p3(), prompt);
    set(&mut texts.p4(), notice.0.clone());
    let header = if jobs.pending.is_empty() {
        format!(
            "Nothing generating  ({} done, {} failed, {} cancelled)",
            jobs.finished, jobs.failed, jobs.cancelled
        )
    } else {
        format!("Generating: {}   [Esc: cancel]", jobs.pending.len())
    };
    set(&mut texts.p5(), header);
    let player = players.active();
    let title = match player.attributes.get("theme") {
        Some(theme) => format!("{}'s world: {theme}", player.id),
        None => format!("{}'s world", player.id),
    };
    set(&mut texts.p6(), title);
}

fn update_chips(input: Res<PromptInput>, mut chips: Query<(&TargetChip, &mut BackgroundColor)>) {
    for (chip, mut bg) in &mut chips {
        let want = if chip.0 == input.target {
            ACCENT.with_alpha(0.55)
        } else {
            BAR_BG
        };
        if bg.0 != want {
            bg.0 = want;
        }
    }
}

/// One row per request in flight (oldest first, up to [`MAX_ROWS`]): its preview, what it is,
/// and a progress bar.
#[allow(clippy::type_complexity)]
fn sync_job_rows(
    mut commands: Commands,
    jobs: Res<Jobs>,
    list: Single<Entity, With<JobList>>,
    rows: Query<(Entity, &JobRow)>,
    mut bars: Query<(&JobBar, &mut Node)>,
    mut steps: Query<(&JobStep, &mut Text)>,
) {
    let shown: Vec<RequestId> = jobs.pending.keys().copied().take(MAX_ROWS).collect();
    let mut have = Vec::new();
    for (entity, row) in &rows {
        if shown.contains(&row.0) {
            have.push(row.0);
        } else {
            commands.entity(entity).despawn();
        }
    }
    for &id in shown.iter().filter(|id| !have.contains(id)) {
        let job = &jobs.pending[&id];
        let row = commands
            .spawn((
                JobRow(id),
                Node {
                    flex_direction: FlexDirection::Row,
                    column_gap: Val::Px(8.0),
                    align_items: AlignItems::Center,
                    ..default()
                },
            ))
            .with_children(|row| {
                row.spawn((
                    Node {
                        width: Val::Px(48.0),
                        height: Val::Px(48.0),
                        ..default()
                    },
                    BackgroundColor(Color::srgb(0.25, 0.27, 0.3)),
                    ImageNode::new(job.handle.clone()),
                ));
                row.spawn(Node {
                    flex_direction: FlexDirection::Column,
                    flex_grow: 1.0,
                    row_gap: Val::Px(3.0),
                    ..default()
                })
                .with_children(|col| {
                    col.spawn(text(
                        format!("{} for {}: {}", job.slot, job.player, job.prompt),
                        13.0,
                        TEXT,
                    ));
                    col.spawn((
                        Node {
                            width: Val::Percent(100.0),
                            height: Val::Px(8.0),
                            border_radius: BorderRadius::all(Val::Px(3.0)),
                            ..default()
                        },
                        BackgroundColor(BAR_BG),
                    ))
                    .with_child((
                        JobBar(id),
                        Node {
                            width: Val::Percent(0.0),
                            height: Val::Percent(100.0),
                            border_radius: BorderRadius::all(Val::Px(3.0)),
                            ..default()
                        },
                        BackgroundColor(BAR_FILL),
                    ));
                    col.spawn((JobStep(id), text("queued", 12.0, DIM)));
                });
            })
            .id();
        commands.entity(*list).add_child(row);
    }
    for (bar, mut node) in &mut bars {
        if let Some(job) = jobs.pending.get(&bar.0) {
            let want = Val::Percent(job.fraction() * 100.0);
            if node.width != want {
                node.width = want;
            }
        }
    }
    for (step, mut t) in &mut steps {
        if let Some(job) = jobs.pending.get(&step.0) {
            let label = if job.step > 0 {
                format!("step {}/{}", job.step, job.total)
            } else if job.started {
                "starting".to_string()
            } else {
                "queued".to_string()
            };
            set(&mut t, label);
        }
    }
}

/// How the panel names the model (`embedded default`, a folder).
#[derive(Resource, Debug, Clone, Default)]
pub struct ModelLabel(pub String);

/// The window's look: camera, panel, help, and the item animation.
#[derive(Debug, Clone, Default)]
pub struct DemoUiPlugin {
    /// How the panel names the model.
    pub model_label: String,
}

impl Plugin for DemoUiPlugin {
    fn build(&self, app: &mut App) {
        app.insert_resource(ClearColor(Color::srgb(0.03, 0.03, 0.04)))
            .insert_resource(ModelLabel(self.model_label.clone()))
            .add_systems(Startup, spawn_ui)
            .add_systems(
                Update,
                (update_texts, update_chips, sync_job_rows, bob_items).after(crate::DemoSet::Logic),
            );
    }
}
