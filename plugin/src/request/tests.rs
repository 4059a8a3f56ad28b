use super::*;

#[test]
fn validation_names_the_field() {
    let r = GenerationRequest {
        width: 100,
        ..Default::default()
    };
    let e = r.validate(8).unwrap_err().to_string();
    assert!(
        e.contains("`width` = 100") && e.contains("multiple of 8"),
        "{e}"
    );
    let r = GenerationRequest {
        num_inference_steps: Some(0),
        ..Default::default()
    };
    assert!(
        r.validate(8)
            .unwrap_err()
            .to_string()
            .contains("num_inference_steps")
    );
    let r = GenerationRequest {
        init_image: Some(InitImage::Path("x.png".into())),
        strength: 1.5,
        ..Default::default()
    };
    assert!(
        r.validate(8)
            .unwrap_err()
            .to_string()
            .contains("`strength` = 1.5")
    );
    assert!(GenerationRequest::default().validate(8).is_ok());
}

#[test]
fn scheduler_names_parse_and_unknown_is_typed() {
    assert_eq!(
        "euler-a".parse::<SchedulerKind>().unwrap(),
        SchedulerKind::EulerAncestral
    );
    let e = "heun".parse::<SchedulerKind>().unwrap_err();
    assert!(matches!(e, DiffusionError::UnknownScheduler(ref s) if s == "heun"));
}
