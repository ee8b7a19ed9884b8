import BlockIO
import Foundation

/// A request read field by field, so that a bad one is answered with the field, what it expects
/// and what it held (`"speedMin" must be a whole number of KiB/s … (got -1)`), rather than with
/// Foundation's "not valid JSON", which is all JSONDecoder says of a number that does not fit.
/// Unknown keys are ignored; a present `null` counts as absent.
extension ControlRequest {
    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let verbs = Verb.allCases.map(\.rawValue).joined(separator: ", ")
        guard let name = try Self.field(.verb, String.self, in: container, "must be a string, one of \(verbs)") else {
            throw ControlCodec.DecodingFailure("missing \"verb\" (one of \(verbs))")
        }
        guard let verb = Verb(rawValue: name) else {
            throw ControlCodec.DecodingFailure("unknown verb \"\(UntrustedText.escape(name))\"; expected one of \(verbs)")
        }
        let speed = "must be a whole number of KiB/s from 0 to \(UInt64.max)"
        self.init(verb: verb,
                  target: try Self.field(.target, String.self, in: container, "must be a string (the target's path)"),
                  speedMin: try Self.field(.speedMin, UInt64.self, in: container, speed),
                  speedMax: try Self.field(.speedMax, UInt64.self, in: container, speed),
                  repair: try Self.field(.repair, Bool.self, in: container, "must be true or false"),
                  keepOld: try Self.field(.keepOld, Bool.self, in: container, "must be true or false"))
    }

    /// The value of `key`, nil if absent; a value of another type or out of range is a
    /// `DecodingFailure` naming the key, `expectation` and what the value was.
    private static func field<T: Decodable>(_ key: CodingKeys, _ type: T.Type, in container: KeyedDecodingContainer<CodingKeys>,
                                            _ expectation: String) throws(ControlCodec.DecodingFailure) -> T? {
        do {
            return try container.decodeIfPresent(type, forKey: key)
        } catch {
            throw ControlCodec.DecodingFailure("\"\(key.stringValue)\" \(expectation) (got \(kind(of: key, in: container)))")
        }
    }

    /// What the JSON value of `key` is, for an error: a number as it reads, else its kind (a
    /// string is not quoted back: it might be long or hostile).
    private static func kind(of key: CodingKeys, in container: KeyedDecodingContainer<CodingKeys>) -> String {
        if let number = try? container.decode(Double.self, forKey: key) {
            if number == number.rounded(), abs(number) < 1e15 { return String(Int64(number)) }
            return "\(number)"
        }
        if (try? container.decode(String.self, forKey: key)) != nil { return "a string" }
        if (try? container.decode(Bool.self, forKey: key)) != nil { return "a boolean" }
        if (try? container.nestedUnkeyedContainer(forKey: key)) != nil { return "an array" }
        if (try? container.nestedContainer(keyedBy: CodingKeys.self, forKey: key)) != nil { return "an object" }
        return "a number out of any range"
    }
}
