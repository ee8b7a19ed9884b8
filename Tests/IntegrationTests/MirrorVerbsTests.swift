import Foundation
import Mirror
import MirrorModel
import Testing

#if canImport(Glibc)
import Glibc
#endif

/// The mdadm-like verbs through the real binary: `build --daemon`, `list`, `detail`, `fail`,
/// `remove`, `add` again, `wait` (with its live bar on a real terminal, via tmux), `status --watch`,
/// and their errors.
@Suite(.serialized) struct MirrorVerbsTests {
    struct Rig {
        let dir: TempDir
        let old: String, new: String, runDir: String
        init(_ label: String = #function, size: Int = 32 << 20) throws {
            dir = try TempDir(label)
            old = dir.file("old.img"); new = dir.file("new.img"); runDir = dir.file("run")
            try makeRandomFile(old, size: size)
            try makeSparseFile(new, size: size)
        }

        @discardableResult
        func cli(_ arguments: String...) throws -> CommandResult {
            try MirrorDaemon.cli(arguments, runDir: runDir, in: dir)
        }

        func status(_ name: String = "m0") throws -> MirrorStatus {
            let result = try cli("status", name, "--json")
            guard result.succeeded else { throw IntegrationFailure("\(result)") }
            return try JSONDecoder().decode(MirrorStatus.self, from: Data(result.stdout.utf8))
        }

        /// Kills a daemon a failed test left behind (its pid file names it).
        func killLeftovers() {
            for name in ["m0", "m1"] { killDaemonLeftBehind(in: runDir, name: name) }
        }
    }

    @Test func daemonModeAndTheLifecycleOfATarget() throws {
        try Tools.require("cmp")
        let rig = try Rig()
        defer { rig.killLeftovers(); rig.dir.remove() }
        let started = try rig.cli("build", "m0", "--source", rig.old, "--target", "missing", "--daemon",
                                  "--listen", "unix:\(rig.dir.file("nbd.sock"))", "--bitmap", rig.dir.file("bitmap"))
        try #require(started.succeeded, "\(started)")
        #expect(started.stdout.hasPrefix("nbd+unix:///m0?socket=") && started.stdout.contains("m0: daemon started (pid"), "\(started)")
        let pid = try #require(pid_t(try String(contentsOfFile: rig.runDir + "/m0.pid", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        #expect(kill(pid, 0) == 0, "the daemon is not running")

        let list = try rig.cli("list")
        #expect(list.succeeded && list.stdout.contains("m0\tdegraded\t\(rig.old) -> missing\tnbd+unix:///m0"), "\(list)")
        let degraded = try rig.cli("detail", "m0")
        #expect(degraded.stdout.contains("State : clean, degraded\n") && degraded.stdout.contains("       -        1      removed")
                && degraded.stdout.contains("Bitmap : \(rig.dir.file("bitmap"))") && degraded.stdout.contains("Daemon PID : \(pid)"),
                "\(degraded)")
        let waitDegraded = try rig.cli("wait", "m0")
        #expect(waitDegraded.status == 1 && waitDegraded.stderr.contains("degraded, no target"), "\(waitDegraded)")

        try #require(try rig.cli("add", "m0", rig.new).succeeded)
        let waited = try rig.cli("wait", "m0")
        #expect(waited.succeeded && waited.stdout.hasSuffix("m0: in sync\n"), "\(waited)")
        let synced = try rig.cli("detail", "m0")
        #expect(synced.stdout.contains("State : clean\n") && synced.stdout.contains("active sync   \(rig.new)"), "\(synced)")

        // fail -> faulty; remove -> degraded; a second remove is refused; add again recovers.
        let active = try rig.cli("remove", "m0")
        #expect(active.status == 1 && active.stderr.contains("is active: fail it first"), "\(active)")
        #expect(try rig.cli("fail", "m0").succeeded)
        let failed = try rig.status()
        #expect(failed.state == .targetFailed && failed.failure?.contains("marked faulty") == true)
        #expect(try rig.cli("detail", "m0").stdout.contains("faulty        \(rig.new)"))
        #expect(try rig.cli("remove", "m0").succeeded)
        #expect(try rig.status().state == .degraded)
        let twice = try rig.cli("remove", "m0")
        #expect(twice.status == 1 && twice.stderr.contains("no target to remove"), "\(twice)")
        try #require(try rig.cli("add", "m0", rig.new).succeeded)
        #expect(try rig.cli("wait", "m0").succeeded)

        let stop = try rig.cli("stop", "m0")
        #expect(stop.succeeded && stop.stdout.contains("in sync"), "\(stop)")
        // Gone, or a zombie its new parent has not reaped yet (the --daemon child was reparented).
        #expect(waitUntil(timeout: 60) {
            kill(pid, 0) != 0 || readText("/proc/\(pid)/stat").split(separator: ")").last?.split(separator: " ").first == "Z"
        }, "the daemon still runs after stop")
        #expect(!FileManager.default.fileExists(atPath: rig.runDir + "/m0.pid") && !FileManager.default.fileExists(atPath: rig.runDir + "/m0.ctl"))
        #expect(readText(rig.runDir + "/m0.log").contains("stopped"))
        #expect(try run("cmp", rig.old, rig.new, in: rig.dir).succeeded)
    }

    @Test func errorsAreOneLineNamingWhat() throws {
        let rig = try Rig(size: 4 << 20)
        defer { rig.killLeftovers(); rig.dir.remove() }
        let missing = try rig.cli("build", "m0", "--source", rig.dir.file("nope.img"), "--target", "missing", "--daemon",
                                  "--listen", "unix:\(rig.dir.file("nbd.sock"))")
        #expect(missing.status == 1 && missing.stderr == "blockmirror: error: open \(rig.dir.file("nope.img")): No such file or directory\n",
                "\(missing)")
        let badName = try rig.cli("build", "../m0", "--source", rig.old, "--target", "missing", "--listen", "unix:\(rig.dir.file("nbd.sock"))")
        #expect(badName.status == 64 && badName.stderr.contains("invalid mirror name"), "\(badName)")
        let same = try rig.cli("build", "m0", "--source", rig.old, "--target", rig.old, "--listen", "unix:\(rig.dir.file("nbd.sock"))")
        #expect(same.status == 64 && same.stderr.contains("same path"), "\(same)")
        for verb in [["detail", "nosuch"], ["wait", "nosuch"], ["fail", "nosuch"], ["check", "nosuch"], ["speed", "nosuch", "--max", "1"]] {
            let result = try MirrorDaemon.cli(verb, runDir: rig.runDir, in: rig.dir)
            #expect(result.status == 1 && result.stderr == "blockmirror: error: no mirror named nosuch (no control socket \(rig.runDir)/nosuch.ctl)\n",
                    "\(result)")
        }
        let md = try rig.cli("status", "md9", "--backend", "md")
        #expect(md.status == 1 && md.stderr.hasPrefix("blockmirror: error: ") && md.stderr.split(separator: "\n").count == 1
                && (md.stderr.contains("md9") || md.stderr.contains("mdadm")), "\(md)")
        let mdListen = try rig.cli("build", "md9", "--backend", "md", "--source", rig.old, "--target", "missing",
                                   "--listen", "unix:\(rig.dir.file("x.sock"))")
        #expect(mdListen.status == 64 && mdListen.stderr.contains("--listen is for the engine backend"), "\(mdListen)")
        let longWatch = try rig.cli("status", "m0", "--watch", "--interval", "5000")
        #expect(longWatch.status == 64 && longWatch.stderr.contains("--interval"), "\(longWatch)")
        let badSpeed = try rig.cli("speed", "m0", "--max", "fast")
        #expect(badSpeed.status == 64, "\(badSpeed)")

        // A running mirror: its source cannot serve a second one; another user is refused.
        let mirror = try MirrorDaemon(source: rig.old, target: "missing", in: rig.dir)
        let busy = try rig.cli("build", "m1", "--source", rig.new, "--target", rig.old, "--listen", "unix:\(rig.dir.file("other.sock"))")
        #expect(busy.status == 1 && busy.stderr.hasPrefix("blockmirror: error: lock \(rig.old): ") && busy.stderr.contains("in use"),
                "\(busy)")
        if Tools.find("setpriv") != nil {
            let nobody = try run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", try BlockMirrorBinary.path(),
                                  "status", "m0", "--run-dir", rig.runDir], in: rig.dir)
            #expect(nobody.status == 1 && nobody.stderr == "blockmirror: error: refusing the runtime directory \(rig.runDir) (owner uid 0 (root), mode 0700): "
                    + "it is not yours (you are uid 65534), and its owner could replace its sockets and files; run as its owner to reach its mirrors, "
                    + "or pass --run-dir DIR, a directory of your own that group and others cannot write to\n", "\(nobody)")
        }
        #expect(try rig.cli("speed", "m0", "--min", "5", "--max", "10").succeeded)
        let inverted = try rig.cli("speed", "m0", "--min", "20")
        #expect(inverted.status == 1 && inverted.stderr == "blockmirror: error: m0: speed max 10K/sec would be below speed min 20K/sec\n",
                "\(inverted)")
        #expect(try rig.cli("stop", "m0", "--timeout", "0").status == 64)
        _ = try mirror.stop()
    }

    /// `wait` on a real terminal (tmux): the md-style bar is redrawn in place, then "in sync".
    @Test func waitDrawsALiveProgressBarOnATerminal() throws {
        try Tools.require("tmux")
        let rig = try Rig()
        defer { rig.killLeftovers(); rig.dir.remove() }
        let mirror = try MirrorDaemon(source: rig.old, target: rig.new, in: rig.dir, ["--speed-min", "1", "--speed-max", "1"])
        let session = "bmwait\(getpid())"
        let binary = try BlockMirrorBinary.path()
        try #require(try run("tmux", "new-session", "-d", "-s", session, "-x", "160", "-y", "10",
                             "\(binary) wait m0 --run-dir \(rig.runDir); sleep 600", in: rig.dir).succeeded)
        defer { _ = try? run("tmux", "kill-session", "-t", session, in: rig.dir) }
        var screen = ""
        let drawing = try waitUntil(timeout: 60) {
            screen = try run("tmux", "capture-pane", "-p", "-t", session, in: rig.dir).stdout
            return screen.contains("m0: [") && screen.contains("recovery =")
        }
        #expect(drawing, "no progress bar on the terminal:\n\(screen)")
        #expect(screen.split(separator: "\n").filter { $0.contains("recovery =") }.count == 1, "the bar is not redrawn in place:\n\(screen)")
        try #require(try mirror.cli("speed", "m0", "--max", "unlimited").succeeded)
        let done = try waitUntil(timeout: 120) {
            screen = try run("tmux", "capture-pane", "-p", "-t", session, in: rig.dir).stdout
            return screen.contains("m0: in sync")
        }
        #expect(done, "wait never said in sync:\n\(screen)")
        _ = try mirror.stop()
    }

    /// `status --watch` without a terminal prints a block per refresh and ends when the mirror stops.
    @Test func statusWatchFollowsUntilTheMirrorStops() throws {
        let rig = try Rig(size: 4 << 20)
        defer { rig.killLeftovers(); rig.dir.remove() }
        let mirror = try MirrorDaemon(source: rig.old, target: "missing", in: rig.dir)
        let watch = try ChildProcess([try BlockMirrorBinary.path(), "status", "m0", "--watch", "--interval", "0.2", "--run-dir", rig.runDir], in: rig.dir)
        defer { watch.killAndWait() }
        #expect(waitUntil(timeout: 60) { watch.stdout.components(separatedBy: "m0 : degraded").count >= 3 }, "\(watch.stdout)")
        _ = try mirror.stop()
        #expect(watch.waitForExit(timeout: 60) && watch.exitCode == 0, "\(watch.stderr)")
        #expect(watch.stdout.contains("m0: no longer running"), "\(watch.stdout)")
    }
}
