//! Resizes done as matrices agree with torch.nn.functional.interpolate.

mod common;

use common::{assert_close, load_cases};
use msa::resize;

#[test]
fn pos_embed_bicubic_matches_torch() {
    let t = load_cases("resize_cases.safetensors");
    for n in [10, 5] {
        let ours = resize::pos_embed(&t["pos.in"], n, n).unwrap();
        assert_close(&format!("pos {n}"), &ours, &t[&format!("pos.out{n}")], 1e-5);
    }
}

#[test]
fn rel_pos_linear_matches_torch() {
    let t = load_cases("resize_cases.safetensors");
    for n in [19, 7] {
        let ours = resize::rel_pos_table(&t["rel.in"], n).unwrap();
        assert_close(&format!("rel {n}"), &ours, &t[&format!("rel.out{n}")], 1e-5);
    }
}

#[test]
fn bilinear_matches_torch_up_and_down() {
    let t = load_cases("resize_cases.safetensors");
    assert_close(
        "up",
        &resize::bilinear(&t["bil.in"], 11, 13).unwrap(),
        &t["bil.up"],
        1e-5,
    );
    assert_close(
        "down",
        &resize::bilinear(&t["bil.big"], 6, 9).unwrap(),
        &t["bil.down"],
        1e-5,
    );
}
