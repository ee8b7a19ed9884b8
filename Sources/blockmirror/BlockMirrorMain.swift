import BlockMirrorCLI

/// The executable's entry point: the command tree lives in BlockMirrorCLI.
@main
extension BlockMirrorCommand {}
