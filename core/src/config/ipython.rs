//! IPython's and Jupyter's own configurable classes, as `rpar-engine` accepts them.
//!
//! An `ipengine` is an IPython kernel: it accepts every traitlets class its shell, kernel and
//! session use (`--InteractiveShell.colors=nocolor`, `c.InteractiveShell.xmode = 'Plain'`), and
//! tools that start engines pass such settings. `rpar-engine` accepts the same classes with any
//! trait and any value (traitlets checks them when the engine's shell is built): the settings of
//! classes marked [`Effect::Shell`] are handed to the embedded IPython shell as its traitlets
//! config, where they take effect as in an ipengine; the others are accepted and logged at debug
//! level. The classes rpar implements itself (`IPEngine`, `MPI`, ... in [`super::schema`]) stay
//! strict.

/// What rpar-engine does with the settings of an IPython class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// Passed to the engine's IPython shell (its traitlets config).
    Shell,
    /// Accepted and not used; the text says why.
    Ignored(&'static str),
}

/// One IPython/Jupyter class.
#[derive(Debug, Clone, Copy)]
pub struct IPythonClass {
    pub name: &'static str,
    pub effect: Effect,
}

const fn shell(name: &'static str) -> IPythonClass {
    IPythonClass {
        name,
        effect: Effect::Shell,
    }
}
const fn ignored(name: &'static str, why: &'static str) -> IPythonClass {
    IPythonClass {
        name,
        effect: Effect::Ignored(why),
    }
}

const KERNEL: &str = "rpar-engine's kernel side (sockets, message loop) is Rust";
const TERMINAL: &str = "an engine has no terminal";

/// The classes an ipengine's shell, kernel and session read.
pub static IPYTHON_CLASSES: &[IPythonClass] = &[
    // the shell and the configurables it creates with itself as parent
    shell("InteractiveShell"),
    shell("ZMQInteractiveShell"),
    shell("HistoryAccessor"),
    shell("HistoryManager"),
    shell("DisplayFormatter"),
    shell("BaseFormatter"),
    shell("PlainTextFormatter"),
    shell("HTMLFormatter"),
    shell("MarkdownFormatter"),
    shell("SVGFormatter"),
    shell("PNGFormatter"),
    shell("PDFFormatter"),
    shell("JPEGFormatter"),
    shell("LatexFormatter"),
    shell("JSONFormatter"),
    shell("JavascriptFormatter"),
    shell("IPythonDisplayFormatter"),
    shell("MimeBundleFormatter"),
    shell("DisplayHook"),
    shell("ZMQDisplayHook"),
    shell("DisplayPublisher"),
    shell("ZMQDisplayPublisher"),
    shell("Completer"),
    shell("IPCompleter"),
    shell("PrefilterManager"),
    shell("AliasManager"),
    shell("ExtensionManager"),
    shell("PayloadManager"),
    shell("BuiltinTrap"),
    shell("DisplayTrap"),
    shell("MagicsManager"),
    shell("Magics"),
    shell("ScriptMagics"),
    shell("StoreMagics"),
    shell("LoggingMagics"),
    shell("OSMagics"),
    // start-up code (exec_lines, exec_files) is run by rpar-engine; the rest of the app's
    // settings are the kernel's
    shell("InteractiveShellApp"),
    shell("IPKernelApp"),
    // the kernel and its session: rpar's own
    ignored("IPythonKernel", KERNEL),
    ignored("Kernel", KERNEL),
    ignored("KernelApp", KERNEL),
    ignored("ConnectionFileMixin", KERNEL),
    ignored(
        "Session",
        "messages are signed by rpar-engine with the connection file's key",
    ),
    ignored("JupyterApp", KERNEL),
    ignored("TerminalInteractiveShell", TERMINAL),
    ignored("TerminalIPythonApp", TERMINAL),
    ignored("IPEngineTask", "not an engine setting"),
];

/// The IPython class called `name`, if it is one.
pub fn ipython_class(name: &str) -> Option<&'static IPythonClass> {
    IPYTHON_CLASSES.iter().find(|c| c.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup() {
        assert_eq!(
            ipython_class("InteractiveShell").map(|c| c.effect),
            Some(Effect::Shell)
        );
        assert!(matches!(
            ipython_class("Session").map(|c| c.effect),
            Some(Effect::Ignored(_))
        ));
        assert!(ipython_class("IPEngine").is_none());
        // no class twice, and none that rpar implements itself
        for (i, c) in IPYTHON_CLASSES.iter().enumerate() {
            assert!(
                IPYTHON_CLASSES[..i].iter().all(|d| d.name != c.name),
                "{}",
                c.name
            );
            assert!(
                super::super::schema::class(c.name).is_none()
                    || c.name == "IPKernelApp"
                    || c.name == "Session"
            );
        }
    }
}
