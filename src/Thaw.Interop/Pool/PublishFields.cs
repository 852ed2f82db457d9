using System.Text.Json;

namespace Thaw.Interop.Pool;

/// <summary>The fields only a <c>publish</c> request has (docs/POOL.md, "Restoring from a live
/// peer"), read in a second pass over its line: the generation of its memory, and the uids it lets
/// read that memory. The common fields (op, snapshot, targets, device, the snapshot's identity) are
/// <see cref="PoolRequest"/>'s. Every field is bounded and a refusal names it.</summary>
internal sealed record PublishFields(long Generation, IReadOnlySet<uint>? AllowUids)
{
    /// <summary>Most uids one publication may name.</summary>
    public const int MaxAllowUids = 64;

    /// <summary>Largest uid accepted; 2^32-1 is (uid_t)-1, "no uid".</summary>
    public const long MaxUid = uint.MaxValue - 1L;

    /// <exception cref="FormatException">A field missing, repeated, of the wrong type or out of range.</exception>
    public static PublishFields Parse(ReadOnlySpan<byte> line)
    {
        var reader = new Utf8JsonReader(line, new JsonReaderOptions { MaxDepth = PoolRequest.MaxDepth });
        long? generation = null;
        HashSet<uint>? allow = null;
        try
        {
            PoolRequest.Next(ref reader); // the request's opening brace: PoolRequest.Parse checked its shape
            while (PoolRequest.Next(ref reader) == JsonTokenType.PropertyName)
            {
                string field = reader.ValueTextEquals("generation") ? "generation" : reader.ValueTextEquals("allow_uids") ? "allow_uids" : "";
                PoolRequest.Next(ref reader);
                switch (field)
                {
                    case "generation":
                        generation = PoolRequest.Once(generation, PoolRequest.Integer(ref reader, field), field);
                        break;
                    case "allow_uids":
                        allow = PoolRequest.Once(allow, ReadUids(ref reader), field);
                        break;
                    default:
                        reader.Skip();
                        break;
                }
            }
        }
        catch (JsonException)
        {
            throw new FormatException($"the request is not valid JSON (near byte {reader.BytesConsumed})");
        }
        return new PublishFields(generation ?? throw new FormatException("no field 'generation'"), allow);
    }

    private static HashSet<uint> ReadUids(ref Utf8JsonReader reader)
    {
        if (reader.TokenType != JsonTokenType.StartArray)
            throw new FormatException($"allow_uids: expected an array of uids, not {PoolRequest.Describe(ref reader)}");
        var uids = new HashSet<uint>();
        for (int i = 0; PoolRequest.Next(ref reader) != JsonTokenType.EndArray; i++)
        {
            if (i == MaxAllowUids)
                throw new FormatException($"allow_uids: more than the {MaxAllowUids} uids a publication may name");
            long uid = PoolRequest.Integer(ref reader, $"allow_uids[{i}]");
            if (uid > MaxUid)
                throw new FormatException($"allow_uids[{i}]: expected a uid from 0 to {MaxUid}, not {uid}");
            uids.Add((uint)uid);
        }
        return uids;
    }
}
