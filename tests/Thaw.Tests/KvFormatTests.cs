using System.Text;
using System.Text.Json;
using Thaw.Interop;
using Thaw.Interop.Format;
using Thaw.Interop.Kv;

namespace Thaw.Tests;

/// <summary>KV-cache snapshot descriptions (thaw.kv metadata) are hostile input: seeded mutations of a
/// valid one end in success or a ThawFormatException naming the file, never another exception.</summary>
public class KvFormatTests
{
    private const string Path = "case.thaw";

    private static readonly TensorSpec[] Regions =
    [
        new("p0.tokens", DType.I64, [20]),
        new("p0.l0.k", DType.BF16, [1, 2, 20, 4]), new("p0.l0.v", DType.BF16, [1, 2, 20, 4]),
        new("p0.l1.k", DType.BF16, [1, 2, 20, 4]), new("p0.l1.v", DType.BF16, [1, 2, 20, 4]),
    ];

    private static string Description(string layout = "transformers", int tokens = 20, string extra = "")
    {
        string hashes = string.Join(",", KvHash.Blocks("model-x", Enumerable.Range(0, tokens).Select(i => (long)i).ToArray(), 16).Select(h => $"\"{h}\""));
        return $"{{\"version\":1,\"hash\":\"sha256-chain-v1\",\"model\":\"model-x\",\"tensor_layout\":\"{layout}\",\"layers\":2," +
               $"\"kv_heads\":2,\"head_dim\":4,\"dtype\":\"BF16\",\"block_size\":16{extra},\"prefixes\":[{{\"tokens\":{tokens},\"block_hashes\":[{hashes}]}}]}}";
    }

    private static Dictionary<string, string> Metadata(string description) =>
        new() { [KvSnapshot.KindKey] = KvSnapshot.Kind, [KvSnapshot.DescriptionKey] = description };

    [Test]
    public void AValidDescriptionDescribesItsRegions()
    {
        KvSnapshot kv = KvSnapshot.Validate(Path, Metadata(Description()), Regions);
        Assert.That(kv.Layout, Is.EqualTo(kv.Layout with { Layers = 2, KvHeads = 2, HeadDim = 4, DType = DType.BF16, BlockSize = 16 }));
        Assert.That(kv.Prefixes.Single().Tokens, Is.EqualTo(20));
        Assert.That(kv.Prefixes.Single().BlockHashes, Has.Count.EqualTo(2));
        using JsonDocument described = JsonDocument.Parse(KvJson.Describe(kv));
        Assert.That(described.RootElement.GetProperty("prefixes")[0].GetProperty("tokens").GetInt64(), Is.EqualTo(20));
    }

    [Test]
    public void APagedVllmLayoutChecksItsBlockDimension()
    {
        TensorSpec[] paged =
        [
            new("p0.tokens", DType.I64, [32]),
            new("p0.l0", DType.F16, [2, 16, 3, 8]), // 2 blocks of 16 tokens × 3 heads × 2·4 elements
        ];
        string d = Description("vllm/FLASH_ATTN/NHD", 32, ",\"block_dim\":0,\"layer_names\":[\"model.layers.0.self_attn.attn\"]")
            .Replace("\"layers\":2", "\"layers\":1").Replace("\"kv_heads\":2", "\"kv_heads\":3").Replace("BF16", "F16");
        Assert.That(KvSnapshot.Validate(Path, Metadata(d), paged).Layout.LayerNames.Single(), Is.EqualTo("model.layers.0.self_attn.attn"));
        var e = Assert.Throws<ThawFormatException>(() => KvSnapshot.Validate(Path, Metadata(d.Replace("\"block_dim\":0", "\"block_dim\":1")), paged))!;
        Assert.That(e.Message, Does.Contain("'p0.l0' has shape [2, 16, 3, 8]"));
        TensorSpec[] huge = [paged[0], new("p0.l0", DType.F16, [2, long.MaxValue / 4, long.MaxValue / 4, 0])];
        e = Assert.Throws<ThawFormatException>(() => KvSnapshot.Validate(Path, Metadata(d), huge))!;
        Assert.That(e.Message, Does.Contain("'p0.l0' has shape [2, 2305843009213693951, "));
        e = Assert.Throws<ThawFormatException>(() => KvSnapshot.Validate(Path, Metadata(d.Replace("\"tokens\":32", "\"tokens\":31")), paged))!;
        Assert.That(e.Message, Does.Contain("not a whole number of 16-token blocks"));
    }

    [Test]
    public void DuplicateFieldsAndDeepNestingAreRefused()
    {
        string duplicate = Description().Replace("\"layers\":2,", "\"layers\":2,\"layers\":2,");
        Assert.Throws<ThawFormatException>(() => KvSnapshot.Validate(Path, Metadata(duplicate), Regions));
        string deep = Description().Replace("\"version\":1", "\"version\":1,\"x\":[[[[[1]]]]]");
        Assert.That(Assert.Throws<ThawFormatException>(() => KvSnapshot.Validate(Path, Metadata(deep), Regions))!.Message,
            Does.StartWith(Path + ": "));
    }

    [Test]
    public void ALoneSurrogateEscapeIsRefusedNamingTheField()
    {
        string d = Description().Replace("\"model\":\"model-x\"", "\"model\":\"a\\ud800\"");
        var e = Assert.Throws<ThawFormatException>(() => KvSnapshot.Validate(Path, Metadata(d), Regions))!;
        Assert.That(e.Message, Does.StartWith(Path + ": 'thaw.kv' "));
    }

    [Test]
    public void MutatedDescriptionsFailCleanly()
    {
        string valid = Description();
        var random = new Random(16);
        const string alphabet = "0123456789-.e\"{}[],:aftnul\\ \u00e9ud8";
        int accepted = 0, refused = 0;
        for (int i = 0; i < 3000; i++)
        {
            var text = new StringBuilder(valid);
            for (int edits = 1 + random.Next(3); edits > 0; edits--)
            {
                int at = random.Next(text.Length);
                switch (random.Next(4))
                {
                    case 0: text[at] = alphabet[random.Next(alphabet.Length)]; break;
                    case 1: text.Insert(at, alphabet[random.Next(alphabet.Length)]); break;
                    case 2: text.Remove(at, 1); break;
                    default: text.Insert(at, random.Next(2) == 0 ? "99999999999999999999" : "-1"); break;
                }
            }
            try
            {
                KvSnapshot.Validate(Path, Metadata(text.ToString()), Regions);
                accepted++;
            }
            catch (ThawFormatException e)
            {
                Assert.That(e.Message, Does.StartWith(Path + ": "));
                refused++;
            }
        }
        Assert.That(refused, Is.GreaterThan(2500), $"{accepted} mutations accepted");
    }
}
