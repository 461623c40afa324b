using Dapper;
using Metering.Engine.Access;
using Metering.Engine.Catalog;
using Metering.Engine.Storage;
using Metering.Engine.Time;
using Npgsql;

namespace Metering.Engine.Registry;

/// <summary>Organisations and their licences and integrity listings: what filing later checks an applicant against.</summary>
public sealed partial class ProviderRegistry
{
    public async Task<Organisation> RegisterOrganisationAsync(Actor actor, Organisation organisation, CancellationToken cancellationToken)
    {
        string code = CheckCreditCode(organisation.CreditCode);
        if (organisation.Name.Trim().Length is 0 or > 200)
        {
            throw FilingRules.Invalid("name must be 1 to 200 characters");
        }

        string legalForm = Names.Of(organisation.LegalForm);
        string district = Districts.Normalise(organisation.District)
            ?? throw new RegistryRefusedException(RegistryRefusalReason.NotRegisteredInShenzhen,
                $"district '{organisation.District}' is not in Shenzhen; the programme admits organisations registered in one of: {string.Join(", ", Districts.Keys)}");
        if (!Districts.CodeRegionMatches(code, district))
        {
            throw new RegistryRefusedException(RegistryRefusalReason.NotRegisteredInShenzhen,
                $"{code} was registered in region {code.Substring(2, 6)}, which is not Shenzhen (4403xx)");
        }

        DateOnly established = ParseDate("established_on", organisation.EstablishedOn);
        DateTimeOffset now = time.GetUtcNow();
        if (established > ShanghaiTime.DateOf(now))
        {
            throw FilingRules.Invalid("established_on lies in the future");
        }

        return await InTransactionAsync(async (connection, transaction) =>
        {
            int inserted = await connection.ExecuteAsync("""
                INSERT INTO organisations (provider_id, name, legal_form, district, established_on, registered_at)
                VALUES (@code, @name, @legalForm, @district, @established, @now)
                ON CONFLICT (provider_id) DO NOTHING
                """, new { code, name = organisation.Name.Trim(), legalForm, district, established, now = now.UtcDateTime }, transaction);
            if (inserted == 0)
            {
                throw new RegistryRefusedException(RegistryRefusalReason.OrganisationExists, $"{code} is already registered");
            }

            await RecordAsync(connection, transaction, actor, now, code, "organisation", code, "register", null, await RowJsonAsync(connection, transaction, "organisations", "provider_id = @code", new { code }));
            return (await ReadOrganisationAsync(connection, transaction, code, now))!;
        }, cancellationToken);
    }

    public async Task<Licence> AddLicenceAsync(Actor actor, Licence licence, CancellationToken cancellationToken)
    {
        string code = CheckCreditCode(licence.CreditCode);
        if (licence.LicenceNumber.Trim().Length is 0 or > 64 || licence.Issuer.Trim().Length is 0 or > 200)
        {
            throw FilingRules.Invalid("a licence needs a licence_number (1 to 64 characters) and an issuer (1 to 200)");
        }

        DateOnly from = ParseDate("valid_from", licence.ValidFrom);
        DateOnly until = ParseDate("valid_until", licence.ValidUntil);
        if (until < from)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.PeriodInvalid, $"the licence is valid until {until:yyyy-MM-dd}, before it is valid from {from:yyyy-MM-dd}");
        }

        DateTimeOffset now = time.GetUtcNow();
        return await InTransactionAsync(async (connection, transaction) =>
        {
            await RequireOrganisationAsync(connection, transaction, code, lockRow: true);
            string number = licence.LicenceNumber.Trim();
            int inserted = await connection.ExecuteAsync("""
                INSERT INTO licences (provider_id, licence_number, issuer, valid_from, valid_until) VALUES (@code, @number, @issuer, @from, @until)
                ON CONFLICT DO NOTHING
                """, new { code, number, issuer = licence.Issuer.Trim(), from, until }, transaction);
            if (inserted == 0)
            {
                throw FilingRules.Invalid($"licence {number} of {code} is already on record");
            }

            await RecordAsync(connection, transaction, actor, now, code, "licence", $"{code}/{number}", "add", null,
                await RowJsonAsync(connection, transaction, "licences", "provider_id = @code AND licence_number = @number", new { code, number }));
            return new Licence { CreditCode = code, LicenceNumber = number, Issuer = licence.Issuer.Trim(), ValidFrom = ShanghaiTime.IsoDate(from), ValidUntil = ShanghaiTime.IsoDate(until) };
        }, cancellationToken);
    }

    public async Task<IntegrityListing> AddIntegrityListingAsync(Actor actor, IntegrityListing listing, CancellationToken cancellationToken)
    {
        string code = CheckCreditCode(listing.CreditCode);
        if (!Names.ListNames.Contains(listing.List))
        {
            throw FilingRules.Invalid($"list must be one of: {string.Join(", ", Names.ListNames)}");
        }

        DateOnly from = ParseDate("listed_from", listing.ListedFrom);
        DateOnly? until = listing.ListedUntil.Length == 0 ? null : ParseDate("listed_until", listing.ListedUntil);
        if (until < from)
        {
            throw new RegistryRefusedException(RegistryRefusalReason.PeriodInvalid, $"the listing ends on {until:yyyy-MM-dd}, before it starts on {from:yyyy-MM-dd}");
        }

        string reason = RequireReasons(listing.Reason, "a listing needs its reason");
        DateTimeOffset now = time.GetUtcNow();
        return await InTransactionAsync(async (connection, transaction) =>
        {
            long id = await connection.ExecuteScalarAsync<long>("""
                INSERT INTO integrity_listings (provider_id, list_name, listed_from, listed_until, reason) VALUES (@code, @list, @from, @until, @reason)
                RETURNING listing_id
                """, new { code, list = listing.List, from, until, reason }, transaction);
            await BumpEpochAsync(connection, transaction, code);
            await RecordAsync(connection, transaction, actor, now, code, "listing", $"{code}/{id}", "add", null,
                await RowJsonAsync(connection, transaction, "integrity_listings", "provider_id = @code AND listing_id = @id", new { code, id }));
            return new IntegrityListing { CreditCode = code, List = listing.List, ListedFrom = ShanghaiTime.IsoDate(from), ListedUntil = until is { } u ? ShanghaiTime.IsoDate(u) : "", Reason = reason };
        }, cancellationToken);
    }

    public async Task<Organisation?> GetOrganisationAsync(string creditCode, CancellationToken cancellationToken)
    {
        await using NpgsqlConnection connection = await dataSource.OpenConnectionAsync(cancellationToken);
        return await ReadOrganisationAsync(connection, null, creditCode, time.GetUtcNow());
    }
}
