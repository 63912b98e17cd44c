//! The page's files, embedded at build time: nothing is fetched from elsewhere.

pub const INDEX_HTML: &str = include_str!("page/index.html");
pub const APP_JS: &str = include_str!("page/app.js");
