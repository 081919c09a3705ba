//! `badabi`: a test plugin exporting, under abi_stable's root-module symbol, a root module
//! with the same names as flowpeek's but another layout (an extra field before `name`).
//! The host's layout check must refuse it.
#![forbid(unsafe_code)]

use abi_stable::library::RootModule;
use abi_stable::sabi_types::VersionStrings;
use abi_stable::std_types::{RResult, RStr, RString};
use abi_stable::{declare_root_module_statics, package_version_strings, StableAbi};

/// Not flowpeek's `PluginMod`.
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = OtherRef)))]
#[sabi(missing_field(panic))]
pub struct Other {
    /// As flowpeek's.
    pub api_version: u32,
    /// The extra field.
    pub extra: u64,
    /// As flowpeek's.
    pub name: extern "C" fn() -> RStr<'static>,
    /// As flowpeek's.
    pub version: extern "C" fn() -> RStr<'static>,
    /// Not flowpeek's signature.
    #[sabi(last_prefix_field)]
    pub new: extern "C" fn(core: u32, config: RStr<'_>) -> RResult<u64, RString>,
}

impl RootModule for OtherRef {
    declare_root_module_statics! {OtherRef}
    const BASE_NAME: &'static str = "flowpeek_plugin";
    const NAME: &'static str = "flowpeek_plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}

extern "C" fn name() -> RStr<'static> {
    RStr::from_str("badabi")
}

extern "C" fn new(_core: u32, _config: RStr<'_>) -> RResult<u64, RString> {
    RResult::ROk(0)
}

#[allow(missing_docs, unreachable_pub)]
mod export {
    use super::{name, new, Other, OtherRef};

    /// The root module.
    #[abi_stable::export_root_module]
    pub fn other_root() -> OtherRef {
        use abi_stable::prefix_type::PrefixTypeTrait;
        Other {
            api_version: 1,
            extra: 7,
            name,
            version: name,
            new,
        }
        .leak_into_prefix()
    }
}
