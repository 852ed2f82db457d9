using System.Text;

namespace Thaw.Interop.Format;

/// <summary>What a tensor name or a metadata key may hold (docs/FORMAT.md, "Names"). The one
/// rule, applied by the reader, the writer and the safetensors importer alike.</summary>
public static class NameRules
{
    private static readonly UTF8Encoding StrictUtf8 = new(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
    private const int QuotedChars = 120;

    /// <summary>Why <paramref name="name"/> may not name a tensor or a metadata key, or null when it may:
    /// non-empty, valid Unicode (no lone surrogate), at most <see cref="SnapshotFormat.MaxNameBytes"/>
    /// bytes of UTF-8, and no control character (U+0000–U+001F, U+007F–U+009F).</summary>
    public static string? Problem(string name)
    {
        if (name.Length == 0)
            return "is empty";
        foreach (char c in name)
            if (char.IsControl(c))
                return $"holds the control character U+{(int)c:X4}";
        int bytes = StrictByteCount(name);
        if (bytes < 0)
            return "is not valid Unicode (it holds a lone surrogate)";
        return bytes > SnapshotFormat.MaxNameBytes ? $"is {bytes} bytes long (at most {SnapshotFormat.MaxNameBytes})" : null;
    }

    /// <summary>The UTF-8 length of a string that must be valid Unicode, or -1 when it holds a lone surrogate.</summary>
    public static int StrictByteCount(string text)
    {
        try
        {
            return StrictUtf8.GetByteCount(text);
        }
        catch (EncoderFallbackException)
        {
            return -1;
        }
    }

    /// <summary>Text from a file, fit for a one-line message: quoted, control characters and lone
    /// surrogates written as \uXXXX escapes, long text shortened.</summary>
    public static string Quote(string text)
    {
        var quoted = new StringBuilder("'");
        for (int i = 0; i < text.Length && i < QuotedChars; i++)
        {
            char c = text[i];
            bool pairedSurrogate = char.IsSurrogatePair(text, i) || (i > 0 && char.IsSurrogatePair(text[i - 1], c));
            if (char.IsControl(c) || (char.IsSurrogate(c) && !pairedSurrogate))
                quoted.Append($"\\u{(int)c:x4}");
            else
                quoted.Append(c);
        }
        if (text.Length > QuotedChars)
            quoted.Append($"... ({text.Length} characters)");
        return quoted.Append('\'').ToString();
    }
}
