//! Dataset layouts on small generated data, and the bad-file checks.

use msa::data::layout::{discover, DatasetKind};
use msa::data::sample::{check_items, load_item};
use msa::data::synthetic::{lesion_image, mask_image, write_folder_dataset};
use std::path::Path;

#[test]
fn folder_without_split_gets_a_seeded_80_20_split() {
    let dir = tempfile::tempdir().unwrap();
    let ids = write_folder_dataset(dir.path(), 10, (40, 30), 1).unwrap();
    let a = discover(DatasetKind::Folder, dir.path(), 7, 0.2).unwrap();
    let b = discover(DatasetKind::Folder, dir.path(), 7, 0.2).unwrap();
    assert_eq!((a.train.len(), a.val.len(), a.test.len()), (8, 2, 0));
    assert_eq!(a.ids(), b.ids(), "same seed, same split");
    let c = discover(DatasetKind::Folder, dir.path(), 8, 0.2).unwrap();
    assert_ne!(
        a.ids()["val"],
        c.ids()["val"],
        "another seed, another split"
    );
    let mut all: Vec<String> = a.train.iter().chain(&a.val).map(|i| i.id.clone()).collect();
    all.sort();
    assert_eq!(all, ids);
    assert!(a.how.contains("seed 7"));
}

#[test]
fn folder_with_split_json_follows_it() {
    let dir = tempfile::tempdir().unwrap();
    write_folder_dataset(dir.path(), 5, (40, 30), 1).unwrap();
    std::fs::write(
        dir.path().join("split.json"),
        r#"{"train": ["case000", "case001", "case002"], "val": ["case003"], "test": ["case004"]}"#,
    )
    .unwrap();
    let s = discover(DatasetKind::Folder, dir.path(), 0, 0.2).unwrap();
    assert_eq!(s.ids()["train"], ["case000", "case001", "case002"]);
    assert_eq!(s.ids()["test"], ["case004"]);
    assert_eq!(s.eval_items().len(), 1);
    std::fs::write(dir.path().join("split.json"), r#"{"train": ["nope"]}"#).unwrap();
    let err = discover(DatasetKind::Folder, dir.path(), 0, 0.2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nope") && err.contains("split.json"), "{err}");
}

#[test]
fn folder_with_sub_folders() {
    let dir = tempfile::tempdir().unwrap();
    write_folder_dataset(&dir.path().join("train"), 4, (40, 30), 1).unwrap();
    write_folder_dataset(&dir.path().join("val"), 2, (40, 30), 2).unwrap();
    write_folder_dataset(&dir.path().join("test"), 3, (40, 30), 3).unwrap();
    let s = discover(DatasetKind::Folder, dir.path(), 0, 0.2).unwrap();
    assert_eq!((s.train.len(), s.val.len(), s.test.len()), (4, 2, 3));
}

/// ISIC 2016 part 1 folders with `n` generated cases per part; Test ids start at 100.
fn write_isic(dir: &Path, parts: &[(&str, usize)]) {
    for &(part, n) in parts {
        let data = dir.join(format!("ISBI2016_ISIC_Part1_{part}_Data"));
        let truth = dir.join(format!("ISBI2016_ISIC_Part1_{part}_GroundTruth"));
        std::fs::create_dir_all(&data).unwrap();
        std::fs::create_dir_all(&truth).unwrap();
        for i in 0..n {
            let (img, m) = lesion_image(40, 30, i as u64);
            let id = format!("ISIC_{:07}", i + if part == "Test" { 100 } else { 0 });
            img.save(data.join(format!("{id}.jpg"))).unwrap();
            mask_image(&m, 40, 30)
                .save(truth.join(format!("{id}_Segmentation.png")))
                .unwrap();
        }
    }
}

#[test]
fn isic_layout() {
    let dir = tempfile::tempdir().unwrap();
    write_isic(dir.path(), &[("Training", 5), ("Test", 2)]);
    let s = discover(DatasetKind::Isic, dir.path(), 0, 0.2).unwrap();
    assert_eq!(s.train.len() + s.val.len(), 5);
    assert_eq!(s.test.len(), 2);
    assert_eq!(s.test[0].id, "ISIC_0000100");
    let sample = load_item(&s.test[0]).unwrap();
    assert_eq!(sample.size(), (30, 40));
}

#[test]
fn isic_csv_files_list_the_cases() {
    let dir = tempfile::tempdir().unwrap();
    write_isic(dir.path(), &[("Training", 5), ("Test", 3)]);
    let row = |part: &str, i: usize| {
        format!(
            "{i},ISBI2016_ISIC_Part1_{part}_Data/ISIC_{i:07}.jpg,\
             ISBI2016_ISIC_Part1_{part}_GroundTruth/ISIC_{i:07}_Segmentation.png\n"
        )
    };
    // The CSVs list a subset, in their own order, under a pandas-style header.
    let training = format!(
        ",img,seg\n{}{}{}",
        row("Training", 3),
        row("Training", 0),
        row("Training", 4)
    );
    std::fs::write(
        dir.path()
            .join("ISBI2016_ISIC_Part1_Training_GroundTruth.csv"),
        training,
    )
    .unwrap();
    let test = format!(",img,seg\n{}{}", row("Test", 102), row("Test", 100));
    std::fs::write(
        dir.path().join("ISBI2016_ISIC_Part1_Test_GroundTruth.csv"),
        test,
    )
    .unwrap();
    let s = discover(DatasetKind::Isic, dir.path(), 0, 0.2).unwrap();
    let mut train: Vec<String> = s.train.iter().chain(&s.val).map(|i| i.id.clone()).collect();
    train.sort();
    assert_eq!(train, ["ISIC_0000000", "ISIC_0000003", "ISIC_0000004"]);
    assert_eq!(s.ids()["test"], ["ISIC_0000102", "ISIC_0000100"]);
    assert_eq!(load_item(&s.test[0]).unwrap().size(), (30, 40));

    // A row naming a file that is not there is reported by name before training.
    let bad = format!(",img,seg\n{}", row("Test", 7));
    std::fs::write(
        dir.path().join("ISBI2016_ISIC_Part1_Test_GroundTruth.csv"),
        bad,
    )
    .unwrap();
    let s = discover(DatasetKind::Isic, dir.path(), 0, 0.2).unwrap();
    let (good, bad) = check_items(&s.test);
    assert!(good.is_empty());
    assert!(bad[0].1.contains("ISIC_0000007.jpg"), "{:?}", bad);
    // A row that is not `index,image,mask` is an error naming the file and line.
    std::fs::write(
        dir.path().join("ISBI2016_ISIC_Part1_Test_GroundTruth.csv"),
        ",img,seg\n1,notes.txt,x\n",
    )
    .unwrap();
    let err = discover(DatasetKind::Isic, dir.path(), 0, 0.2)
        .unwrap_err()
        .to_string();
    assert!(err.contains("Test_GroundTruth.csv line 2"), "{err}");
}

#[test]
fn refuge_majority_of_raters_and_two_classes() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("train").join("g0001");
    std::fs::create_dir_all(&case).unwrap();
    let (img, _) = lesion_image(20, 10, 1);
    img.save(case.join("g0001.png")).unwrap();
    // Three raters: pixel column x is foreground for rater r when x < 5 + 5 r.
    for r in 0..3 {
        let m: Vec<bool> = (0..200).map(|i| i % 20 < 5 + 5 * r).collect();
        mask_image(&m, 20, 10)
            .save(case.join(format!("g0001_seg_disc_{}.png", r + 1)))
            .unwrap();
        let cup: Vec<bool> = (0..200).map(|i| i % 20 < 2 + r).collect();
        mask_image(&cup, 20, 10)
            .save(case.join(format!("g0001_seg_cup_{}.png", r + 1)))
            .unwrap();
    }
    let mut s = discover(DatasetKind::Refuge, dir.path(), 0, 0.0).unwrap();
    assert_eq!(s.classes, ["disc", "cup"]);
    let item = s.train.pop().or_else(|| s.val.pop()).unwrap();
    assert_eq!(item.masks[0].len(), 3);
    let sample = load_item(&item).unwrap();
    // Majority (2 of 3): x < 10 for the disc, x < 3 for the cup.
    assert!(sample.masks[0][9] && !sample.masks[0][10]);
    assert!(sample.masks[1][2] && !sample.masks[1][3]);
}

fn bad_dataset(dir: &Path) {
    write_folder_dataset(dir, 4, (40, 30), 1).unwrap();
    std::fs::write(dir.join("images/case000.png"), b"not a png").unwrap();
    mask_image(&[true; 20 * 10], 20, 10)
        .save(dir.join("masks/case001.png"))
        .unwrap();
    mask_image(&vec![false; 40 * 30], 40, 30)
        .save(dir.join("masks/case002.png"))
        .unwrap();
    let (img, _) = lesion_image(40, 30, 9);
    img.save(dir.join("images/lonely.png")).unwrap();
}

#[test]
fn bad_cases_are_named_with_their_reason() {
    let dir = tempfile::tempdir().unwrap();
    bad_dataset(dir.path());
    let s = discover(DatasetKind::Folder, dir.path(), 0, 0.0).unwrap();
    let items: Vec<_> = s.train.iter().chain(&s.val).cloned().collect();
    let (good, bad) = check_items(&items);
    assert_eq!(
        good.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(),
        ["case003"]
    );
    let reason = |id: &str| {
        bad.iter()
            .find(|(i, _)| i == id)
            .map(|(_, r)| r.clone())
            .unwrap()
    };
    assert!(
        reason("case000").contains("case000.png"),
        "{}",
        reason("case000")
    );
    assert!(reason("case001").contains("20x10") && reason("case001").contains("40x30"));
    assert!(reason("case002").contains("empty"));
    assert!(reason("lonely").contains("no mask"));
}
