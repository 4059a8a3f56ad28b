use super::*;

#[test]
fn trailing_steps_that_do_not_divide_1000() {
    // round(arange(1000, 0, -1000/n)) - 1
    assert_eq!(
        ddim_timesteps(TimestepSpacing::Trailing, 1000, 3, 1),
        vec![999.0, 666.0, 332.0]
    );
    assert_eq!(
        ddim_timesteps(TimestepSpacing::Trailing, 1000, 7, 1),
        vec![999.0, 856.0, 713.0, 570.0, 428.0, 285.0, 142.0]
    );
    // 62.5 steps: 937.5 and 812.5 round half to even.
    let t16 = ddim_timesteps(TimestepSpacing::Trailing, 1000, 16, 0);
    assert_eq!(&t16[..4], &[999.0, 937.0, 874.0, 811.0]);
    // numpy's arange gives 62 values for 61 steps (1000 / (1000 / 61) > 61); we keep 61.
    assert_eq!(np_arange(1000.0, 0.0, -1000.0 / 61.0).len(), 62);
    assert_eq!(
        ddim_timesteps(TimestepSpacing::Trailing, 1000, 61, 0).last(),
        Some(&15.0)
    );
    for n in 1..=1000 {
        let ts = ddim_timesteps(TimestepSpacing::Trailing, 1000, n, 0);
        assert_eq!(ts.len(), n, "n = {n}");
        assert!(ts.iter().all(|&t| (0.0..1000.0).contains(&t)), "n = {n}");
    }
}

#[test]
fn leading_and_linspace() {
    assert_eq!(
        ddim_timesteps(TimestepSpacing::Leading, 1000, 3, 1),
        vec![667.0, 334.0, 1.0]
    );
    assert_eq!(
        ddim_timesteps(TimestepSpacing::Leading, 1000, 7, 0),
        vec![852.0, 710.0, 568.0, 426.0, 284.0, 142.0, 0.0]
    );
    // linspace(0, 999, 7) = 0, 166.5, 333, 499.5, 666, 832.5, 999: DDIM rounds half to even.
    assert_eq!(
        ddim_timesteps(TimestepSpacing::Linspace, 1000, 7, 1),
        vec![999.0, 832.0, 666.0, 500.0, 333.0, 166.0, 0.0]
    );
    let euler = euler_timesteps(TimestepSpacing::Linspace, 1000, 7, 1);
    assert_eq!(euler[1], 832.5);
    assert_eq!(
        euler_timesteps(TimestepSpacing::Linspace, 1000, 6, 1)[1],
        799.2f32 as f64
    );
    assert_eq!(
        dpm_timesteps(TimestepSpacing::Leading, 1000, 1000, 8, 1)[..2],
        [889.0, 778.0]
    );
    assert_eq!(
        dpm_timesteps(TimestepSpacing::Linspace, 1000, 1000, 3, 0),
        vec![999.0, 666.0, 333.0]
    );
    assert_eq!(
        lcm_timesteps(1000, 50, 4).unwrap(),
        vec![999.0, 759.0, 499.0, 259.0]
    );
    assert_eq!(lcm_timesteps(1000, 50, 51), None);
}

#[test]
fn numpy_helpers() {
    assert_eq!(interp(2.0, &[0.0, 1.0, 4.0]), 4.0);
    assert_eq!(interp(1.5, &[0.0, 1.0, 4.0]), 2.5);
    assert_eq!(interp(-1.0, &[3.0, 1.0]), 3.0);
    assert_eq!(np_linspace(0.0, 1.0, 1), vec![0.0]);
    assert_eq!(torch_linspace_f32(1.0, 2.0, 3), vec![1.0, 1.5, 2.0]);
    assert_eq!(round_half_even(2.5), 2.0);
    assert_eq!(cumprod(&[0.5, 0.5]), vec![0.5, 0.25]);
}
