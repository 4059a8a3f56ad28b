use super::display::*;
use super::*;

#[test]
fn number_formatting() {
    assert_eq!(thousands(0), "0");
    assert_eq!(thousands(999), "999");
    assert_eq!(thousands(1000), "1,000");
    assert_eq!(thousands(1234567), "1,234,567");
    assert_eq!(human(859_520_964), "859.5 M");
    assert_eq!(human(1_500), "1.5 K");
}

#[test]
fn missing_folder_is_one_problem() {
    let r = inspect(Path::new("/nonexistent/model"), &InspectOptions::default());
    assert!(matches!(
        r.problems.as_slice(),
        [DiffusionError::ModelFolderMissing { .. }]
    ));
    assert_eq!(r.family_label(), "unknown");
}
