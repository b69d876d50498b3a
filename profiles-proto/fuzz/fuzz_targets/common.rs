//! What every target does with a profile a decoder accepted: the crate's
//! boundary invariant says it has passed `validate`, so check that, then
//! fold it (`ProfileView` indexes without checks on validated data).
#![allow(dead_code)]

use smolder_profiles_proto::otlp::profiles::v1development::ProfilesData;
use smolder_profiles_proto::{fold, validate, FoldOptions};

pub fn accepted(data: &ProfilesData) {
    if let Err(e) = validate(data) {
        panic!("decoder returned a profile that fails validate: {e}");
    }
    let _ = fold(data, &FoldOptions::default());
}

/// libfuzzer-sys installs a panic hook that aborts at the panic, before any
/// `catch_unwind` runs. The `perf script` reader deliberately runs inferno's
/// collapser under `catch_unwind` and returns its panics as `Err`, so for the
/// targets that reach it the hook is replaced: panics inside inferno are not
/// printed, others are printed as usual, and none aborts here. A panic that
/// escapes the library is still a crash: libfuzzer-sys catches it around the
/// target body and aborts.
pub fn let_the_library_catch_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _aborting = std::panic::take_hook();
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let in_inferno = info
                .location()
                .is_some_and(|l| l.file().contains("/inferno-"));
            if !in_inferno {
                default(info);
            }
        }));
    });
}
