import BlockIO
import Control
import NBD
import TOMLKit

extension MigrationPlan {
    /// The keys a plan's top level may hold.
    static let planKeys = ["name", "concurrency", "speed_max", "speed_min", "state_dir", "listen", "group", "volume"]
    /// The keys a `[[group]]` may hold.
    static let groupKeys = ["name", "speed_max"]
    /// The keys a `[[volume]]` may hold.
    static let volumeKeys = ["name", "source", "target", "listen", "bitmap", "group", "priority", "speed_min", "speed_max"]

    /// Reads a plan from TOML text. `file` names it in errors and gives the plan's default name
    /// (its last path component without `.toml`). Throws `PlanError` for what refuses the whole
    /// plan; a volume's own mistakes land in `rejected`.
    public init(toml text: String, file: String) throws(PlanError) {
        let table: TOMLTable
        do {
            table = try TOMLTable(string: text)
        } catch let error as TOMLParseError {
            throw PlanError("plan \(file): not valid TOML at line \(error.source.begin.line), column \(error.source.begin.column): \(error.description)")
        } catch {
            throw PlanError("plan \(file): not valid TOML: \(error)")
        }
        func fail(_ problem: String) -> PlanError { PlanError("plan \(file): \(problem)") }
        let top = TableReader(table, known: Self.planKeys)
        do throws(KeyProblem) {
            try top.refuseUnknownKeys()
            let stem = String(file.split(separator: "/").last ?? Substring(file))
            name = try top.string("name") ?? (stem.hasSuffix(".toml") ? String(stem.dropLast(5)) : stem)
            concurrency = try top.integer("concurrency", in: 1...1024) ?? 1
            speedMax = try top.integer("speed_max", in: 1...Int.max).map(UInt64.init)
            stateDirectory = try top.string("state_dir") ?? Self.defaultStateDirectory
            guard stateDirectory.hasPrefix("/") else { throw KeyProblem("\"state_dir\": \(UntrustedText.escape(stateDirectory)) is not an absolute path") }
            let speedMin = try top.integer("speed_min", in: 1...Int.max).map(UInt64.init) ?? Self.defaultSpeedMin
            let listen = try top.strings("listen") ?? [Self.defaultListen]
            groups = try top.tables("group").enumerated().map { (index, group) throws(KeyProblem) in
                try Self.group(group, index: index + 1)
            }
            var seen = Set<String>()
            for group in groups where !seen.insert(group.name).inserted {
                throw KeyProblem("group \"\(UntrustedText.escape(group.name))\" is defined twice")
            }
            volumes = []
            rejected = []
            // What two volumes must not share, and whose it is: listen addresses (a TCP port 0
            // picks a free port each), bitmap files, and the storage itself (one's target must not
            // be another's source or target: both would be written by two mirrors).
            var addresses: [String: String] = [:], bitmaps: [String: String] = [:], legs: [String: String] = [:], names = Set<String>()
            for (index, entry) in try top.tables("volume").enumerated() {
                do throws(KeyProblem) {
                    let volume = try Self.volume(entry, index: index + 1, listen: listen, speedMin: speedMin, stateDirectory: stateDirectory,
                                                 groups: Set(groups.map(\.name)))
                    guard names.insert(volume.name).inserted else { throw KeyProblem("\"name\": \"\(volume.name)\" is the name of an earlier volume") }
                    for address in volume.listen where !address.hasPrefix("tcp:") || !address.hasSuffix(":0") {
                        if let other = addresses[address] { throw KeyProblem("\"listen\": \(UntrustedText.escape(address)) is volume \"\(other)\"'s too") }
                    }
                    if let other = bitmaps[volume.bitmap] { throw KeyProblem("\"bitmap\": \(UntrustedText.escape(volume.bitmap)) is volume \"\(other)\"'s too") }
                    for (key, leg) in [("source", volume.source), ("target", volume.target)] {
                        if let other = legs[leg] { throw KeyProblem("\"\(key)\": \(UntrustedText.escape(leg)) is \(other) too") }
                    }
                    for address in volume.listen { addresses[address] = volume.name }
                    bitmaps[volume.bitmap] = volume.name
                    legs[volume.source] = "volume \"\(volume.name)\"'s source"
                    legs[volume.target] = "volume \"\(volume.name)\"'s target"
                    volumes.append(volume)
                } catch {
                    let named = (try? TableReader(entry, known: Self.volumeKeys).string("name")) ?? nil
                    rejected.append(Rejection(volume: named, index: index + 1, reason: error.description))
                }
            }
            do { try RuntimeDirectory.validate(name: name) } catch { throw KeyProblem("\"name\": \(error)") }
            if names.contains(name) {
                throw KeyProblem("\"name\": the plan is named \"\(name)\" like one of its volumes (name one of them otherwise: both are reached by name)")
            }
        } catch {
            throw fail(error.description)
        }
        guard !volumes.isEmpty || !rejected.isEmpty else { throw fail("no [[volume]] to migrate") }
    }

    private static func group(_ table: TOMLTable, index: Int) throws(KeyProblem) -> Group {
        let reader = TableReader(table, known: groupKeys)
        do throws(KeyProblem) {
            try reader.refuseUnknownKeys()
            guard let name = try reader.string("name") else { throw KeyProblem("\"name\" is missing") }
            return Group(name: name, speedMax: try reader.integer("speed_max", in: 1...Int.max).map(UInt64.init))
        } catch {
            throw KeyProblem("group #\(index): \(error.description)")
        }
    }

    private static func volume(_ table: TOMLTable, index: Int, listen: [String], speedMin: UInt64, stateDirectory: String,
                               groups: Set<String>) throws(KeyProblem) -> Volume {
        let reader = TableReader(table, known: volumeKeys)
        try reader.refuseUnknownKeys()
        guard let name = try reader.string("name") else { throw KeyProblem("\"name\" is missing") }
        do { try RuntimeDirectory.validate(name: name) } catch { throw KeyProblem("\"name\": \(error)") }
        guard let source = try reader.string("source") else { throw KeyProblem("\"source\" is missing") }
        guard let target = try reader.string("target") else { throw KeyProblem("\"target\" is missing") }
        for (key, leg) in [("source", source), ("target", target)] {
            if NBDURI.isURI(leg) {
                do { _ = try NBDURI.parse(leg) } catch { throw KeyProblem("\"\(key)\": \(UntrustedText.escape("\(error)"))") }
            } else if !leg.hasPrefix("/") {
                throw KeyProblem("\"\(key)\": \(UntrustedText.escape(leg)) is neither an absolute path nor an NBD URI")
            }
        }
        guard source != target else { throw KeyProblem("\"target\" is the source (\(UntrustedText.escape(source)))") }
        let addresses = (try reader.strings("listen") ?? listen).map { $0.replacingOccurrences(of: "{name}", with: name) }
        guard !addresses.isEmpty else { throw KeyProblem("\"listen\" names no address") }
        for address in addresses {
            let parsed: ListenAddress
            do { parsed = try ListenAddress(parsing: address) } catch { throw KeyProblem("\"listen\": \(UntrustedText.escape("\(error)"))") }
            if case .unix(let path) = parsed, !path.hasPrefix("/") { throw KeyProblem("\"listen\": \(UntrustedText.escape(address)) is not an absolute path") }
        }
        let group = try reader.string("group")
        if let group, !groups.contains(group) { throw KeyProblem("\"group\": no [[group]] is named \"\(UntrustedText.escape(group))\"") }
        let ownMinimum = try reader.integer("speed_min", in: 1...Int.max).map(UInt64.init) ?? speedMin
        let ownMaximum = try reader.integer("speed_max", in: 1...Int.max).map(UInt64.init)
        if let ownMaximum, ownMaximum < ownMinimum {
            throw KeyProblem("\"speed_max\" (\(ownMaximum)) is below its \"speed_min\" (\(ownMinimum))")
        }
        let bitmap = try reader.string("bitmap") ?? "\(stateDirectory)/\(name).bitmap"
        guard bitmap.hasPrefix("/") else { throw KeyProblem("\"bitmap\": \(UntrustedText.escape(bitmap)) is not an absolute path") }
        return Volume(name: name, source: source, target: target, listen: addresses, bitmap: bitmap, group: group,
                      priority: try reader.integer("priority", in: -1_000_000...1_000_000) ?? 0, speedMin: ownMinimum, speedMax: ownMaximum)
    }
}

/// What is wrong with a key (or a table's keys), for people.
struct KeyProblem: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Reads typed values from one TOML table, naming the key in every complaint.
struct TableReader {
    let table: TOMLTable
    let known: [String]

    init(_ table: TOMLTable, known: [String]) {
        self.table = table
        self.known = known
    }

    /// A key the table holds that is not one of `known` (a typo, most likely), with the known
    /// key it is closest to.
    func refuseUnknownKeys() throws(KeyProblem) {
        for key in table.keys.sorted() where !known.contains(key) {
            let closest = known.min { Self.distance(key, $0) < Self.distance(key, $1) }
            let hint = closest.flatMap { Self.distance(key, $0) <= max(2, key.count / 3) ? " (did you mean \"\($0)\"?)" : nil }
            throw KeyProblem("unknown key \"\(UntrustedText.escape(key))\"\(hint ?? ""); the keys here are \(known.joined(separator: ", "))")
        }
    }

    func string(_ key: String) throws(KeyProblem) -> String? {
        guard let value = table[key] else { return nil }
        guard let text = value.string else { throw mistyped(key, value, "a string") }
        guard !text.isEmpty else { throw KeyProblem("\"\(key)\" is empty") }
        return text
    }

    func integer(_ key: String, in range: ClosedRange<Int>) throws(KeyProblem) -> Int? {
        guard let value = table[key] else { return nil }
        guard let number = value.int else { throw mistyped(key, value, "an integer") }
        guard range.contains(number) else {
            throw KeyProblem("\"\(key)\" must be \(range.upperBound == Int.max ? "at least \(range.lowerBound)" : "from \(range.lowerBound) to \(range.upperBound)") (got \(number))")
        }
        return number
    }

    /// A string, or an array of strings.
    func strings(_ key: String) throws(KeyProblem) -> [String]? {
        guard let value = table[key] else { return nil }
        if let text = value.string { return [text] }
        return try elements(of: key, value, "a string or an array of strings") { $0.string }
    }

    /// The tables of an array of tables (`[[key]]`); none if absent.
    func tables(_ key: String) throws(KeyProblem) -> [TOMLTable] {
        guard let value = table[key] else { return [] }
        return try elements(of: key, value, "an array of tables ([[\(key)]])") { $0.table }
    }

    /// Every element of an array as `element` reads it; any that does not read, or a value that
    /// is not an array, is `expected`'s complaint.
    private func elements<Element>(of key: String, _ value: any TOMLValueConvertible, _ expected: String,
                                   _ element: (any TOMLValueConvertible) -> Element?) throws(KeyProblem) -> [Element] {
        guard let array = value.array else { throw mistyped(key, value, expected) }
        var elements: [Element] = []
        for item in array {
            guard let read = element(item) else { throw mistyped(key, value, expected) }
            elements.append(read)
        }
        return elements
    }

    private func mistyped(_ key: String, _ value: any TOMLValueConvertible, _ expected: String) -> KeyProblem {
        KeyProblem("\"\(key)\" must be \(expected), not \(Self.article(value.type))")
    }

    private static func article(_ type: TOMLType) -> String {
        switch type {
        case .int: return "an integer"
        case .array: return "an array"
        default: return "a \(type)"
        }
    }

    /// Levenshtein distance, for "did you mean".
    static func distance(_ a: String, _ b: String) -> Int {
        let a = Array(a), b = Array(b)
        var previous = Array(0...b.count)
        for (i, x) in a.enumerated() {
            var current = [i + 1]
            for (j, y) in b.enumerated() {
                current.append(min(previous[j + 1] + 1, current[j] + 1, previous[j] + (x == y ? 0 : 1)))
            }
            previous = current
        }
        return previous[b.count]
    }
}
