import Foundation

/// `mdadm --detail /dev/mdX`, parsed: the "Key : Value" header and the device table.
public struct MDDetail: Sendable, Equatable {
    /// A row of the device table: `0  254  16  0  active sync  /dev/dm-16`.
    public struct Device: Sendable, Equatable {
        /// The descriptor number (`-` for a removed slot: nil).
        public var number: Int?
        /// The role in the array (`-` for a spare or faulty device not in a role: nil).
        public var raidDevice: Int?
        /// The state words: `active sync`, `spare rebuilding`, `faulty`, `removed` …
        public var state: String
        /// The device path; nil for a removed slot.
        public var path: String?

        public init(number: Int?, raidDevice: Int?, state: String, path: String?) {
            self.number = number; self.raidDevice = raidDevice; self.state = state; self.path = path
        }
    }

    /// The header's values by key (`Raid Level`, `Array Size`, `State`, `Rebuild Status` …).
    public var fields: [String: String]
    public var devices: [Device]

    public init(parsing text: String) throws(MDParseError) {
        fields = [:]
        devices = []
        var inTable = false
        for rawLine in text.split(separator: "\n") {
            let line = String(rawLine)
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            if trimmed.hasPrefix("Number") && trimmed.contains("RaidDevice") {
                inTable = true
                continue
            }
            if inTable {
                guard !trimmed.isEmpty else { continue }
                devices.append(try Self.device(trimmed, line: line))
            } else if let colon = line.range(of: " : ") {
                fields[line[..<colon.lowerBound].trimmingCharacters(in: .whitespaces)] =
                    line[colon.upperBound...].trimmingCharacters(in: .whitespaces)
            }
        }
        guard fields["Raid Level"] != nil || fields["State"] != nil else {
            throw MDParseError(source: "mdadm --detail", line: text.split(separator: "\n").first.map(String.init) ?? "",
                               reason: "no Raid Level or State in the output")
        }
    }

    /// `State : clean, degraded, recovering` as its words.
    public var stateWords: [String] {
        (fields["State"] ?? "").split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }.filter { !$0.isEmpty }
    }

    /// `Array Size : 104857600 (100.00 GiB 107.37 GB)`: the size in KiB.
    public var arraySizeKiB: UInt64? {
        fields["Array Size"].flatMap { UInt64($0.split(separator: " ").first ?? "") }
    }

    /// `Rebuild Status : 37% complete` (also Resync/Check Status): the percentage.
    public var rebuildPercent: Int? {
        for key in ["Rebuild Status", "Resync Status", "Check Status", "Reshape Status"] {
            if let value = fields[key], let percent = Int(value.split(separator: "%").first ?? "") { return percent }
        }
        return nil
    }

    /// Table rows: `Number Major Minor RaidDevice State… Device`.
    static func device(_ row: String, line: String) throws(MDParseError) -> Device {
        let words = row.split(separator: " ").map(String.init)
        guard words.count >= 5 else {
            throw MDParseError(source: "mdadm --detail", line: line, reason: "a device row needs at least 5 columns")
        }
        let number = Int(words[0])
        let raidDevice = Int(words[3])
        var rest = Array(words[4...])
        var path: String?
        if let last = rest.last, last.hasPrefix("/") {
            path = last
            rest.removeLast()
        }
        return Device(number: number, raidDevice: raidDevice, state: rest.joined(separator: " "), path: path)
    }
}
