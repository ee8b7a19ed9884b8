import Foundation

/// /proc/mdstat, parsed: the personalities and every array with its members, sizes, health and the
/// progress of a resync, recovery, check or repair.
public struct MDStat: Sendable, Equatable {
    public var personalities: [String]
    public var arrays: [MDArrayStat]

    /// Parses the text of /proc/mdstat. Lines it does not know are skipped (kernels add fields);
    /// an array line it cannot read is an error naming the line.
    public init(parsing text: String) throws(MDParseError) {
        personalities = []
        arrays = []
        var current: MDArrayStat?
        for rawLine in text.split(separator: "\n", omittingEmptySubsequences: false) {
            let line = String(rawLine)
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if line.hasPrefix("Personalities :") {
                personalities = line.dropFirst("Personalities :".count).split(separator: " ").map {
                    $0.trimmingCharacters(in: CharacterSet(charactersIn: "[]"))
                }
            } else if !line.hasPrefix(" "), let colon = line.range(of: " : "), !line.hasPrefix("unused devices") {
                if let done = current { arrays.append(done) }
                current = try MDArrayStat(name: String(line[..<colon.lowerBound]), description: String(line[colon.upperBound...]), line: line)
            } else if !trimmed.isEmpty, current != nil {
                current!.read(detailLine: trimmed)
            } else if trimmed.isEmpty, let done = current {
                arrays.append(done)
                current = nil
            }
        }
        if let done = current { arrays.append(done) }
    }

    /// The array named `name` (`md0`), if listed.
    public func array(_ name: String) -> MDArrayStat? { arrays.first { $0.name == name } }
}

/// One array of /proc/mdstat.
public struct MDArrayStat: Sendable, Equatable {
    /// A member device: `vdb[1](F)`.
    public struct Member: Sendable, Equatable {
        public var device: String
        /// The descriptor number in brackets (not the role).
        public var number: Int
        public var faulty: Bool
        public var spare: Bool
        public var writeMostly: Bool
    }

    /// The progress line: `[==>....]  recovery = 12.6% (66048/524288) finish=0.1min speed=66048K/sec`.
    public struct Progress: Sendable, Equatable {
        /// `recovery`, `resync`, `check`, `repair` or `reshape`.
        public var action: String
        public var percent: Double
        /// KiB done and in all (1 KiB blocks, as mdstat counts).
        public var done: UInt64
        public var total: UInt64
        public var finishMinutes: Double?
        public var speedKiBPerSecond: UInt64?
    }

    public var name: String
    /// `active` or `inactive`.
    public var active: Bool
    /// `(auto-read-only)` or `(read-only)`.
    public var readOnly: Bool
    /// `raid1` and so on; nil for an inactive array.
    public var level: String?
    public var members: [Member]
    /// Size in 1 KiB blocks.
    public var blocks: UInt64?
    /// `super non-persistent`, `super 1.2` …
    public var superblock: String?
    /// `[2/1]`: devices the array should have, and working.
    public var raidDisks: Int?
    public var workingDisks: Int?
    /// `[U_]`: one character per role, U up, _ missing.
    public var health: String?
    public var progress: Progress?
    /// `resync=PENDING`, `resync=DELAYED`, `recovery=DELAYED` …: an action waiting its turn.
    public var pending: String?
    /// The bitmap line, as shown (`0/1 pages [0KB], 65536KB chunk`).
    public var bitmap: String?

    init(name: String, description: String, line: String) throws(MDParseError) {
        self.name = name
        var words = description.split(separator: " ").map(String.init)
        guard let state = words.first, state == "active" || state == "inactive" else {
            throw MDParseError(source: "/proc/mdstat", line: line, reason: "expected active or inactive after the name")
        }
        active = state == "active"
        words.removeFirst()
        readOnly = false
        if let first = words.first, first.hasPrefix("(") {
            readOnly = first.contains("read-only")
            words.removeFirst()
        }
        if active, let first = words.first, !first.contains("[") {
            level = first
            words.removeFirst()
        }
        members = []
        for word in words {
            guard let open = word.firstIndex(of: "["), let close = word.firstIndex(of: "]"), open < close,
                  let number = Int(word[word.index(after: open)..<close]) else {
                throw MDParseError(source: "/proc/mdstat", line: line, reason: "cannot read member \"\(word)\"")
            }
            let flags = word[word.index(after: close)...]
            members.append(Member(device: String(word[..<open]), number: number, faulty: flags.contains("(F)"),
                                  spare: flags.contains("(S)"), writeMostly: flags.contains("(W)")))
        }
    }

    /// Reads one indented line after the array line.
    mutating func read(detailLine line: String) {
        if line.hasPrefix("bitmap:") {
            bitmap = line.dropFirst("bitmap:".count).trimmingCharacters(in: .whitespaces)
            return
        }
        if let blocksEnd = line.range(of: " blocks"), let count = UInt64(line[..<blocksEnd.lowerBound]) {
            blocks = count
            let rest = line[blocksEnd.upperBound...]
            if let superRange = rest.range(of: "super ") {
                let after = rest[superRange.upperBound...]
                superblock = "super " + (after.split(separator: " ").first.map(String.init) ?? "")
                if after.hasPrefix("non-persistent") { superblock = "super non-persistent" }
            }
            for token in rest.split(separator: " ") where token.hasPrefix("[") && token.hasSuffix("]") {
                let inner = token.dropFirst().dropLast()
                if let slash = inner.firstIndex(of: "/"), let raid = Int(inner[..<slash]), let working = Int(inner[inner.index(after: slash)...]) {
                    raidDisks = raid
                    workingDisks = working
                } else if inner.allSatisfy({ $0 == "U" || $0 == "_" }) {
                    health = String(inner)
                }
            }
            return
        }
        for token in line.split(separator: " ") where token.contains("=PENDING") || token.contains("=DELAYED") {
            pending = String(token)
        }
        if let progress = Self.progress(line) { self.progress = progress }
    }

    /// `[=>...]  recovery = 8.5% (89472/1048512) finish=0.8min speed=19884K/sec`
    static func progress(_ line: String) -> Progress? {
        guard let equals = line.range(of: " = ") else { return nil }
        let before = line[..<equals.lowerBound].split(separator: " ")
        guard let action = before.last.map(String.init), ["recovery", "resync", "check", "repair", "reshape"].contains(action) else { return nil }
        let after = line[equals.upperBound...].split(separator: " ")
        guard let percentText = after.first, percentText.hasSuffix("%"), let percent = Double(percentText.dropLast()) else { return nil }
        var progress = Progress(action: action, percent: percent, done: 0, total: 0)
        for token in after.dropFirst() {
            if token.hasPrefix("("), token.hasSuffix(")"), let slash = token.firstIndex(of: "/") {
                progress.done = UInt64(token[token.index(after: token.startIndex)..<slash]) ?? 0
                progress.total = UInt64(token[token.index(after: slash)..<token.index(before: token.endIndex)]) ?? 0
            } else if token.hasPrefix("finish="), token.hasSuffix("min") {
                progress.finishMinutes = Double(token.dropFirst("finish=".count).dropLast(3))
            } else if token.hasPrefix("speed="), token.hasSuffix("K/sec") {
                progress.speedKiBPerSecond = UInt64(token.dropFirst("speed=".count).dropLast(5))
            }
        }
        return progress
    }
}

/// A line of md's output that could not be read.
public struct MDParseError: Error, CustomStringConvertible, Sendable, Equatable {
    public let source: String
    public let line: String
    public let reason: String
    public var description: String { "\(source): \(reason): \"\(line)\"" }
}
