using System.Buffers.Binary;
using System.Security.Cryptography;
using System.Text;

namespace Thaw.Interop.Kv;

/// <summary>The prefix hash of KV snapshots, "sha256-chain-v1": the same in every process and on every
/// machine (no PYTHONHASHSEED), and bound to the model, so a prefix of another model never matches.
/// root = SHA-256("thaw.kv.sha256-chain-v1\n" ‖ model fingerprint);
/// block i = SHA-256(block i−1 (root for i = 0) ‖ u32le(token count) ‖ each token id as u64le).</summary>
public static class KvHash
{
    /// <summary>The algorithm's name as recorded in a KV description.</summary>
    public const string Algorithm = "sha256-chain-v1";
    private static readonly byte[] Domain = Encoding.ASCII.GetBytes("thaw.kv.sha256-chain-v1\n");

    /// <summary>The hex digest of every block of <paramref name="tokens"/>, the last one possibly partial.</summary>
    public static List<string> Blocks(string model, ReadOnlySpan<long> tokens, int blockSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        byte[] parent = SHA256.HashData([.. Domain, .. Encoding.UTF8.GetBytes(model)]);
        var hashes = new List<string>((tokens.Length + blockSize - 1) / blockSize);
        byte[] block = new byte[4 + 8L * blockSize <= int.MaxValue ? 4 + 8 * blockSize : throw new ArgumentOutOfRangeException(nameof(blockSize))];
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        for (int start = 0; start < tokens.Length; start += blockSize)
        {
            int count = Math.Min(blockSize, tokens.Length - start);
            BinaryPrimitives.WriteUInt32LittleEndian(block, (uint)count);
            for (int i = 0; i < count; i++)
                BinaryPrimitives.WriteInt64LittleEndian(block.AsSpan(4 + 8 * i), tokens[start + i]);
            sha.AppendData(parent);
            sha.AppendData(block, 0, 4 + 8 * count);
            parent = sha.GetHashAndReset();
            hashes.Add(Convert.ToHexStringLower(parent));
        }
        return hashes;
    }
}
